"""Exactly-once across learner SIGKILLs: the real runtime process feeding the real learner
process, the learner SIGKILLed three times and restarted from its checkpoint with
``--resume``. Every step the runtime numbered is ingested once: the counters agree, and the
learner's ingest journal, read back step by step, holds each seq of the session exactly once."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from learner import checkpoint
from simulation.drills.bench_faults import FaultDrill
from simulation.drills.fault_config import SMALL_LEARNER, DrillConfig
from simulation.drills.journal_audit import audit_journal

_PROCESSES = all(importlib.util.find_spec(m) is not None for m in ("learner.__main__", "runtime.__main__"))

#: Train and checkpoint early, so the kills land after checkpoints and the resume restores one.
_EARLY = ("schedule.seed_frames=60", "service.checkpoint_every=40")


async def _learner_killed_three_times(tmp_path: Path) -> None:
    config = DrillConfig(kills=3, partition_s=0.0, malformed=0, hz=20.0, seconds=14.0, work_dir=tmp_path,
                         learner_sets=SMALL_LEARNER + _EARLY, start_timeout_s=60.0, drain_timeout_s=40.0)
    drill = FaultDrill(config, tmp_path)
    result = await drill.run()
    summary = json.dumps(result.to_json())
    learner_log = drill.learner.log_path.read_text(errors="replace")

    # The drill did what it says: three kills, each restart resumed a checkpoint.
    assert result.learner_kills == 3 and drill.learner.starts == 4, summary
    assert learner_log.count("resumed ") >= 2, learner_log[-4000:]
    assert checkpoint.checkpoint_dirs(tmp_path / "run"), "no checkpoint was written"

    # Counters: generated == acked == ingested, nothing counted twice into the replay.
    assert result.crashes == 0, summary + learner_log[-4000:]
    assert result.transitions_generated > 0, summary
    assert result.transitions_generated == result.runtime_acked_seq == result.transitions_ingested, summary
    assert result.duplicates == 0 and result.lost_steps == 0, summary

    # The journal, read back: every seq of the runtime's session exactly once, no gap.
    session = drill.runtime_status.last.get("session_id") if drill.runtime_status else None
    audit = audit_journal(tmp_path / "run")
    assert audit.duplicates == 0 and audit.position_errors == 0, audit
    assert set(audit.unique) == {session}, audit
    assert audit.unique[session] == result.transitions_generated and audit.gaps[session] == 0, audit
    assert audit.steps == result.transitions_generated, audit

    # One more resume after the clean stop restores the same counts and re-counts nothing.
    await drill.start_learner(tmp_path / "demos", resume=True)
    try:
        detail = drill.learner_status.last if drill.learner_status else {}
        assert detail.get("transitions_ingested") == result.transitions_generated, detail
        assert detail.get("env_steps") == result.transitions_generated, detail
    finally:
        assert await drill.learner.stop(30.0) == 0
        if drill.learner_status is not None:
            drill.learner_status.close()


@pytest.mark.skipif(not _PROCESSES, reason="python -m learner / python -m runtime not present yet")
@pytest.mark.timeout(170)
def test_learner_killed_three_times_loses_and_repeats_nothing(tmp_path: Path) -> None:
    asyncio.run(_learner_killed_three_times(tmp_path))
