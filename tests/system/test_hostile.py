"""A short run of ``resetfree-bench hostile`` (issue 17): 2,000 hostile messages on the
control, uplink and weights channels of a real learner and a real runtime process; every
message is counted as accepted or rejected, both processes survive, the legitimate runtime
beside the attackers is acked for every step."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulation.drills.bench_hostile import HostileConfig, run_hostile
from simulation.drills.hostile_report import SHARES


def test_two_thousand_hostile_messages_are_all_counted_and_nothing_dies(tmp_path: Path) -> None:
    result = asyncio.run(run_hostile(HostileConfig(messages=2000, work_dir=tmp_path)))
    summary = result.to_json()
    assert set(result.channels) == set(SHARES), summary
    for name, channel in result.channels.items():
        assert channel.sent == channel.received == channel.accepted + channel.rejected, (name, summary)
    assert sum(c.hostile for c in result.channels.values()) == 2000
    up = result.channels["learner_uplink"]
    # issue 17's cases reached the learner and were refused for the right reason
    assert up.by_kind["overflow_hello"] > 0 and up.by_kind["absurd_loss_hello"] > 0
    assert up.by_reason["refused_batches"] >= up.by_kind["nan_obs"] + up.by_kind["huge_action"]
    assert up.by_reason["refused_sessions"] >= up.by_kind["absurd_loss_hello"] and up.by_reason["handler_errors"] == 0
    weights = result.channels["runtime_weights"]
    assert weights.by_reason["malformed"] > 0 and weights.by_reason["checksum_failures"] + \
        weights.by_reason["superseded"] + weights.by_reason["stale"] > 0 and weights.accepted >= 1
    for name in ("learner_control", "runtime_control"):
        control = result.channels[name]
        assert control.by_reason["failed_replies"] == 0 and control.rejected >= control.by_kind["float_version_estop"]
    assert result.runtime_state == "running"  # no float-version e-stop got through
    assert result.legit_steps > 0 and result.legit_acked == result.legit_steps, summary
    assert result.exits == {"runtime": 0, "learner": 0} and result.tracebacks == 0, summary
    assert result.ok, summary
