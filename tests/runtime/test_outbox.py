"""Outbox: write-through, in-order, exactly-once replay from memory and spill across disconnects,
restarts and a SIGKILL-like crash."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import OutboxError
from protocol.messages import TransitionBatch
from runtime.outbox import Outbox, OutboxConfig
from runtime.spill import SpillConfig, SpillLog


def steps(outbox: Outbox, n: int, marker: float) -> TransitionBatch:
    """A batch of ``n`` steps continuing ``outbox``'s numbering; every action equals ``marker``."""
    return TransitionBatch(session_id=outbox.session_id, first_seq=outbox.next_seq,
                           observations={"proprio": np.zeros((n, 2), np.float32)},
                           actions=np.full((n, 2), marker, np.float32), agents=np.zeros(n, np.uint8),
                           timestamps=np.zeros(n), is_first=np.zeros(n, bool), is_last=np.zeros(n, bool))


class Learner:
    """Cumulative-ack receiver that records every step it ingests (must be exactly once)."""

    def __init__(self) -> None:
        self.expected = 0
        self.markers: list[float] = []

    def receive(self, first_seq: int, count: int, batch: TransitionBatch) -> None:
        assert (batch.first_seq, batch.size) == (first_seq, count)
        actions = batch.actions
        assert first_seq <= self.expected, f"gap: got {first_seq}, expected {self.expected}"
        skip = self.expected - first_seq  # dedupe an overlapping resend
        self.markers.extend(actions[skip:, 0].tolist())
        self.expected = max(self.expected, first_seq + count)


async def drain(outbox: Outbox, learner: Learner, batches: int, ack: bool = True) -> None:
    for _ in range(batches):
        async with asyncio.timeout(5):
            out = await outbox.next_batch()
        learner.receive(out.first_seq, out.count, out.batch)
        if ack:
            outbox.on_ack(learner.expected)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def open_outbox(directory: Path, **cfg: int) -> Outbox:
    spill = SpillLog.open(SpillConfig(directory=directory, segment_bytes=2000, max_bytes=1_000_000))
    return Outbox(spill, OutboxConfig(**cfg))


def test_disconnect_spills_and_replay_is_in_order_and_exactly_once(tmp_path: Path) -> None:
    async def body() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        learner = Learner()
        try:
            outbox.set_connected(True)
            for i in range(5):
                outbox.put_steps(steps(outbox, 3, float(i)))
            await drain(outbox, learner, 3, ack=False)
            outbox.on_ack(6)  # only the first two batches are acked
            outbox.set_connected(False)  # link drops: memory copies of written batches are dropped
            for i in range(5, 12):
                outbox.put_steps(steps(outbox, 3, float(i)))
            await until(lambda: outbox.memory_bytes == 0)
            assert outbox.spilled_bytes > 0 and outbox.batches == 10 and outbox.depth == 30
            learner.expected = 6  # the learner kept what it had durably ingested
            learner.markers = learner.markers[:6]
            outbox.set_connected(True)
            outbox.rewind(6)
            await drain(outbox, learner, 10)
            assert learner.markers == [float(i) for i in range(12) for _ in range(3)]
            assert outbox.depth == 0
            await until(lambda: outbox.spilled_bytes == 0)
        finally:
            outbox.close()
    run(body)


def test_wait_all_acked_wakes_on_the_ack_that_completes_it(tmp_path: Path) -> None:
    async def body() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        try:
            outbox.set_connected(True)
            for i in range(3):
                outbox.put_steps(steps(outbox, 3, float(i)))
            waiter = asyncio.ensure_future(outbox.wait_all_acked())
            await asyncio.sleep(0.05)
            outbox.on_ack(6)  # not all: still waiting
            await asyncio.sleep(0.05)
            assert not waiter.done()
            outbox.on_ack(9)
            await asyncio.wait_for(waiter, 1.0)
            await asyncio.wait_for(outbox.wait_all_acked(), 0.1)  # nothing unacked: returns at once
        finally:
            outbox.close()
    run(body)


def test_memory_bound_spills_new_batches_and_sends_them_in_order(tmp_path: Path) -> None:
    async def body() -> None:
        outbox = open_outbox(tmp_path, max_memory_batches=2)
        outbox.start()
        learner = Learner()
        try:
            outbox.set_connected(True)
            for i in range(8):
                outbox.put_steps(steps(outbox, 2, float(i)))
            await until(lambda: outbox.memory_bytes <= 2 * 2 * (8 + 8 + 1 + 8 + 2))
            await drain(outbox, learner, 8)
            assert learner.markers == [float(i) for i in range(8) for _ in range(2)]
        finally:
            outbox.close()
    run(body)


def test_restart_resends_spilled_batches_and_continues_numbering(tmp_path: Path) -> None:
    async def first_life() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        try:
            for i in range(4):  # never connected: everything spills
                outbox.put_steps(steps(outbox, 5, float(i)))
            await until(lambda: outbox.memory_bytes == 0)
        finally:
            outbox.close()

    async def second_life() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        learner = Learner()
        learner.expected = 10  # the learner had ingested 0..9 before the runtime restarted
        learner.markers = [0.0] * 5 + [1.0] * 5
        try:
            assert outbox.next_seq == 20 and outbox.batches == 4
            outbox.set_connected(True)
            outbox.rewind(10)
            assert outbox.batches == 2 and outbox.depth == 10
            assert outbox.put_steps(steps(outbox, 5, 4.0)) == 20
            await drain(outbox, learner, 3)
            assert learner.markers == [float(i) for i in range(5) for _ in range(5)]
        finally:
            outbox.close()

    run(first_life)
    session = SpillLog.open(SpillConfig(directory=tmp_path)).session_id
    run(second_life)
    assert SpillLog.open(SpillConfig(directory=tmp_path)).session_id == session


def test_spill_full_stops_accepting_without_losing_the_batch(tmp_path: Path) -> None:
    async def body() -> None:
        spill = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=500, max_bytes=1000))
        outbox = Outbox(spill, OutboxConfig())
        outbox.start()
        learner = Learner()
        try:
            for i in range(6):
                if not outbox.accepting:
                    break
                outbox.put_steps(steps(outbox, 4, float(i)))
                await asyncio.sleep(0.05)
            assert not outbox.accepting
            with pytest.raises(OutboxError):
                outbox.put_steps(steps(outbox, 1, 99.0))
            put = outbox.batches
            assert outbox.unwritten_steps > 0  # the refused batch waits in memory, unsent
            outbox.set_connected(True)
            outbox.rewind(0)
            await drain(outbox, learner, put)  # acks free the disk; the held batch is written and sent
            assert learner.markers == [float(i) for i in range(put) for _ in range(4)]
            await until(lambda: outbox.accepting)
        finally:
            outbox.close()
    run(body)


def test_put_rejects_a_seq_gap_and_another_session(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    batch = steps(outbox, 1, 0.0)
    with pytest.raises(OutboxError):
        outbox.put_steps(dataclasses.replace(batch, first_seq=5))
    with pytest.raises(OutboxError):
        outbox.put_steps(dataclasses.replace(batch, session_id="other"))
    outbox.close()


def test_write_through_every_batch_reaches_disk_while_connected(tmp_path: Path) -> None:
    async def body() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        try:
            outbox.set_connected(True)
            for i in range(4):
                outbox.put_steps(steps(outbox, 3, float(i)))
            await until(lambda: outbox.unwritten_steps == 0)
            assert outbox.memory_bytes > 0  # memory stays the fast path
            assert [seq for seq, _ in outbox.spill.records()] == [0, 3, 6, 9]
            learner = Learner()
            await drain(outbox, learner, 4)
            await until(lambda: outbox.spilled_bytes == 0)  # acked: the disk copy is released
        finally:
            outbox.close()
    run(body)


def test_crash_loses_only_unwritten_steps_and_reuses_their_seqs(tmp_path: Path) -> None:
    """SIGKILL stand-in: the process state is dropped without ``close()``; only what reached the
    spill log survives, and the numbering continues from the last written record."""
    async def first_life() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        outbox.set_connected(True)
        for i in range(3):
            outbox.put_steps(steps(outbox, 4, float(i)))
        await until(lambda: outbox.unwritten_steps == 0)
        learner = Learner()
        await drain(outbox, learner, 1)  # seqs 0..3 acked
        outbox._disk._jobs.put(("stop", None))  # the writer dies first (the process is being killed)
        outbox._disk._writer.join(5)  # type: ignore[union-attr]
        outbox.put_steps(steps(outbox, 4, 99.0))  # seqs 12..15 sit in the writer queue: lost
        assert outbox.unwritten_steps == 4
        outbox.spill._file.flush()  # the OS keeps what was written, even without close()

    async def second_life() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        try:
            assert outbox.next_seq == 12  # 12..15 were never written nor sent: reused
            learner = Learner()
            learner.expected, learner.markers = 4, [0.0] * 4
            outbox.set_connected(True)
            outbox.rewind(4)
            outbox.put_steps(steps(outbox, 4, 3.0))
            await drain(outbox, learner, 3)
            assert learner.markers == [float(i) for i in range(4) for _ in range(4)]
        finally:
            outbox.close()

    run(first_life)
    run(second_life)


def test_an_unreadable_head_record_is_lost_loudly_and_excluded_from_oldest_seq(tmp_path: Path) -> None:
    from runtime.errors import SpillError

    async def body() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        try:
            for i in range(3):
                outbox.put_steps(steps(outbox, 3, float(i)))
            await until(lambda: outbox.memory_bytes == 0)  # not connected: only the disk copies remain
            real_read = outbox.spill.read

            def failing_read(seq: int) -> bytes:
                if seq == 0:
                    raise SpillError("record 0: bad CRC")  # the disk lost the oldest record
                return real_read(seq)

            outbox.spill.read = failing_read  # type: ignore[method-assign]
            outbox.set_connected(True)
            outbox.rewind(0)
            assert outbox.oldest_seq == 0 and not outbox.head_lost
            async with asyncio.timeout(5):
                out = await outbox.next_batch()
            assert out.first_seq == 3 and outbox.lost_steps == 3
            assert outbox.head_lost and outbox.oldest_seq == 3  # what the next hello declares
            outbox.rewind(0)  # a reconnect never offers the lost batch again
            async with asyncio.timeout(5):
                assert (await outbox.next_batch()).first_seq == 3
            outbox.on_ack(6)
            assert not outbox.head_lost and outbox.oldest_seq == 6
        finally:
            outbox.close()
    run(body)
