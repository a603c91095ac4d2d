"""Issue 17 at the learner's ingest, in-process over real loopback sockets: values that may not
be trained on are refused before the ack and never reach the journal or replay; a peer's
message can never end the service."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio

from learner.journal import IngestJournal, JournalConfig
from learner.service import LearnerService
from protocol.messages import Status
from protocol.transport import BATCH_REFUSED, refused_range
from tests.learner.test_service import (Runtime, demos, make_batch, make_hello, started, status, stop,  # noqa: F401
                                        tiny_config)


def poisoned(kind: str, session: str, first: int, n: int = 8):
    batch = make_batch(session, first, n)
    obs = np.array(batch.observations["state"])
    actions = np.array(batch.actions)
    if kind == "nan_obs":
        obs[3, 1] = np.nan
    elif kind == "inf_obs":
        obs[5, 0] = -np.inf
    elif kind == "huge_action":
        actions[2, 0] = 1e30
    elif kind == "nan_action":
        actions[0, 1] = np.nan
    elif kind == "outside_action":
        actions[7, 1] = 1.0001
    elif kind == "inf_timestamp":
        ts = np.array(batch.timestamps)
        ts[4] = np.inf
        return dataclasses.replace(batch, timestamps=ts)
    return dataclasses.replace(batch, observations={"state": obs}, actions=actions)


KINDS = ("nan_obs", "inf_obs", "huge_action", "nan_action", "outside_action", "inf_timestamp")


def test_non_finite_and_out_of_range_batches_are_refused_before_the_ack(tmp_path: Path, demos) -> None:
    """Hole 2: such batches used to be acked and journaled. Now each is refused with a
    ``batch_refused`` status naming the seqs and the reason, skipped (acked past, so the runtime
    does not resend it) and never journaled; the valid batches around them train."""
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            first = 0
            for kind in KINDS:
                rt.send(make_batch("s1", first, 8))  # a good one
                rt.send(poisoned(kind, "s1", first + 8))
                refusal = await rt.recv(Status)
                assert refusal.state == BATCH_REFUSED and not refusal.ok
                assert refused_range(refusal) == ("s1", first + 8, first + 16), refusal
                field = {"nan_obs": "observations.state", "inf_obs": "observations.state",
                         "inf_timestamp": "timestamps"}.get(kind, "actions")
                assert f"transitions.{field}" in refusal.message, refusal.message
                ack = await rt.ack_at_least(first + 16)
                assert ack.seq == first + 16  # acked past: the runtime will not resend it
                first += 16
            rt.send(make_batch("s1", first, 8))
            await rt.ack_at_least(first + 8, trained=first + 8)
            d = (await status(service)).detail
            assert d["refused_batches"] == len(KINDS) and d["refused_steps"] == 8 * len(KINDS)
            assert d["transitions_ingested"] == 8 * (len(KINDS) + 1) and d["env_steps"] == d["transitions_ingested"]
            assert d["skipped_nonfinite"] == 0 and d["sessions"] == 1
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())
    journal = IngestJournal.open(JournalConfig(directory=tmp_path / "run" / "journal", retention_steps=1 << 40))
    try:
        records = list(journal.records_from(journal.start))
    finally:
        journal.close()
    seqs = np.concatenate([np.arange(b.first_seq, b.end_seq) for _, b in records])
    assert sorted(seqs.tolist()) == [s for s in range(16 * len(KINDS) + 8) if (s // 8) % 2 == 0 or s >= 16 * len(KINDS)]
    for _, b in records:
        assert np.isfinite(b.observations["state"]).all() and np.isfinite(b.timestamps).all()
        assert np.abs(b.actions).max() <= 1.0


def test_a_failing_handler_or_reply_does_not_end_the_service(tmp_path: Path, demos, monkeypatch) -> None:
    """Hole 1, second half: an exception while handling one peer's message, or a status that
    cannot be encoded, is logged and counted; the service keeps serving everyone."""
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            real = service.admission.check_hello
            calls = {"n": 0}

            def explode(hello):
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("boom")
                return real(hello)

            monkeypatch.setattr(service.admission, "check_hello", explode)
            rt.send(make_hello("s1"))  # its handling raises: logged, counted, no welcome
            assert (await rt.hello(make_hello("s1"))).accepted
            service.admission.lost_steps = 2**64 + 5  # a counter past what msgpack encodes: saturates
            d = (await status(service)).detail
            assert d["handler_errors"] == 1 and d["lost_steps"] == 2**63 - 1
            real_detail = service.status_detail
            monkeypatch.setattr(service, "status_detail", lambda: 1 / 0)
            bad = await status(service)  # the handler raises: an error status, the server lives
            assert not bad.ok and "handler failed: ZeroDivisionError" in bad.message
            monkeypatch.setattr(service, "status_detail", lambda: {"name": "\ud800"})  # not UTF-8: unencodable
            bad = await status(service)  # the reply cannot be encoded: an error status instead
            assert not bad.ok and "not encodable" in bad.message
            monkeypatch.setattr(service, "status_detail", real_detail)
            rt.send(make_batch("s1", 0, 8))
            assert (await rt.ack_at_least(8)).seq == 8
            d = (await status(service)).detail
            assert d["failed_replies"] == 2 and d["transitions_ingested"] == 8
            assert not task.done()
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


@pytest.mark.parametrize("declared", [2**32 + 1, 2**53 - 1])
def test_an_absurd_declared_loss_is_refused_with_the_reason(tmp_path: Path, demos, declared: int) -> None:
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            welcome = await rt.hello(make_hello("s1", next_seq=declared, oldest_seq=declared))
            assert not welcome.accepted and "max_declared_loss" in welcome.reason
            rt.close()
            rt = Runtime(ctx, service.endpoints["uplink"])
            welcome = await rt.hello(make_hello("s1", next_seq=2**32, oldest_seq=2**32))  # the bound itself
            assert welcome.accepted and welcome.resume_seq == 2**32
            d = (await status(service)).detail
            assert d["lost_steps"] == 2**32 and d["refused_sessions"] == 1
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())



def test_a_learner_killed_after_a_refusal_resumes_across_the_hole(tmp_path: Path, demos, monkeypatch) -> None:
    """The journal holds no record for refused seqs: replaying it after a crash (no final
    checkpoint) must skip the hole, as the gap rule's holes are skipped, not fail on it."""
    run_dir = tmp_path / "run"

    async def first() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=run_dir)
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            rt.send(make_batch("s1", 0, 8))
            rt.send(poisoned("nan_obs", "s1", 8))
            rt.send(make_batch("s1", 16, 8))
            await rt.ack_at_least(24)
            rt.close()
            monkeypatch.setattr(service.worker, "checkpoint", lambda: None)  # as if killed: no final checkpoint
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    async def second() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=run_dir, resume=True)
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            welcome = await rt.hello(make_hello("s1", next_seq=24))
            assert welcome.accepted and welcome.resume_seq == 24
            rt.send(make_batch("s1", 24, 8))
            assert (await rt.ack_at_least(32, trained=32)).seq == 32
            d = (await status(service)).detail
            assert (d["env_steps"], d["transitions_ingested"]) == (24, 24), d
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(first())
    assert not any(run_dir.glob("ckpt-*"))
    asyncio.run(second())


def test_an_old_journals_bad_records_are_skipped_at_start_up(tmp_path: Path, demos) -> None:
    """A journal written before ingest checked values may hold non-finite steps: replaying it
    at start-up skips those records (counted in ``journal_refused_steps``, logged) and trains
    on the rest; the session resumes after them."""
    journal = IngestJournal.open(JournalConfig(directory=tmp_path / "run" / "journal", retention_steps=1 << 40))
    try:
        for position, batch in ((0, make_batch("s1", 0, 8)), (8, poisoned("nan_obs", "s1", 8)),
                                (16, make_batch("s1", 16, 8))):
            journal.append(position, batch)
    finally:
        journal.close()

    async def scenario() -> dict:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run", resume=True)
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            welcome = await rt.hello(make_hello("s1", next_seq=24, oldest_seq=24))
            assert welcome.accepted and welcome.resume_seq == 24, welcome
            rt.send(make_batch("s1", 24, 8))
            await rt.ack_at_least(32, trained=32)
            detail = (await status(service)).detail
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)
        return detail

    d = asyncio.run(scenario())
    assert d["journal_refused_steps"] == 8 and d["skipped_nonfinite"] == 0
    assert d["env_steps"] == 24  # 8 + 8 replayed, 8 new


def test_an_old_journals_bad_record_followed_by_a_hole_is_skipped_at_start_up(tmp_path: Path, demos) -> None:
    """A bad record, then a seq hole in the same session (the gap rule skipped it when the
    journal was written): start-up skips the bad record and starts a new stream after the hole
    instead of failing on a stream the bad record already closed."""
    journal = IngestJournal.open(JournalConfig(directory=tmp_path / "run" / "journal", retention_steps=1 << 40))
    try:
        for position, batch in ((0, make_batch("s1", 0, 8)), (8, poisoned("nan_action", "s1", 8)),
                                (16, make_batch("s1", 24, 8))):
            journal.append(position, batch)
    finally:
        journal.close()

    async def scenario() -> dict:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run", resume=True)
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            welcome = await rt.hello(make_hello("s1", next_seq=32, oldest_seq=32))
            assert welcome.accepted and welcome.resume_seq == 32, welcome
            rt.send(make_batch("s1", 32, 8))
            await rt.ack_at_least(40, trained=40)
            detail = (await status(service)).detail
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)
        return detail

    d = asyncio.run(scenario())
    assert d["journal_refused_steps"] == 8
    assert d["env_steps"] == 24  # the two good records either side of the hole, replayed, and 8 new


def test_a_batch_sent_as_one_frame_is_journaled_as_that_frame(tmp_path: Path, demos) -> None:
    """A runtime sends each batch as one frame (its spill record); the journal stores those bytes
    as they arrived instead of encoding the decoded batch again. A batch the dedupe trims (part
    resend) is encoded afresh, and every record reads back as the steps that were sent."""
    import msgpack

    from protocol.codec import encode

    def reordered(batch) -> bytes:
        """A valid one-frame encoding that differs from encode()'s: its map keys in reverse order."""
        fields = msgpack.unpackb(bytes(encode(batch, single_frame=True)[0]), raw=False)
        return msgpack.packb(dict(reversed(list(fields.items()))), use_bin_type=True)

    sent = [make_batch("s1", 0, 8), make_batch("s1", 8, 8), make_batch("s1", 12, 8)]  # the third overlaps by 4
    frames = [reordered(b) for b in sent]
    assert frames[0] != bytes(encode(sent[0], single_frame=True)[0])

    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            for frame in frames:
                rt.sock.send_multipart([frame])
            await rt.ack_at_least(20)
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())
    journal = IngestJournal.open(JournalConfig(directory=tmp_path / "run" / "journal", retention_steps=1 << 40),
                                 read_only=True)
    try:
        raw = [(seq, count, bytes(payload)) for seq, count, payload in journal._log.iter_from(0)]
        records = list(journal.records_from(0))
    finally:
        journal.close()
    assert [(seq, count) for seq, count, _ in raw] == [(0, 8), (8, 8), (16, 4)]
    assert raw[0][2] == frames[0] and raw[1][2] == frames[1]  # stored as received
    assert raw[2][2] == bytes(encode(sent[2].tail(16), single_frame=True)[0])  # trimmed: encoded here
    got = np.concatenate([b.observations["state"] for _, b in records])
    want = np.concatenate([sent[0].observations["state"], sent[1].observations["state"],
                           sent[2].observations["state"][4:]])
    assert np.array_equal(got, want)
