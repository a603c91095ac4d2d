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
from protocol.codec import decode
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
        batch = decode(out.frames)  # the wire message, as a learner decodes it
        assert isinstance(batch, TransitionBatch)
        learner.receive(out.first_seq, out.count, batch)
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


def test_an_unencodable_batch_stops_recording_and_the_writer_lives(tmp_path: Path, monkeypatch) -> None:
    import runtime.spill_io
    from protocol.errors import ProtocolError

    real = runtime.spill_io.encode_batch
    calls = {"n": 0}

    def encode_once_bad(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ProtocolError("unencodable (injected)")
        return real(batch)

    monkeypatch.setattr(runtime.spill_io, "encode_batch", encode_once_bad)

    async def body() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        try:
            outbox.put_steps(steps(outbox, 3, 0.0))
            outbox.put_steps(steps(outbox, 3, 1.0))  # its encode fails
            await until(lambda: not outbox.accepting)  # recording stops, the batch stays in memory
            assert outbox.unwritten_steps == 3 and outbox.written_batches == 1
            await asyncio.sleep(0.1)
            assert outbox._disk._writer.is_alive()  # the writer thread survived the failed encode
        finally:
            outbox.close()
    run(body)


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


# ---------------------------------------------------------------- the record is the wire message

def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("a batch was encoded or decoded on its way from the spill log to the socket")


def test_the_record_written_is_the_message_sent_and_a_spilled_one_goes_as_read(tmp_path: Path, monkeypatch) -> None:
    """A batch is encoded once, by the writer thread: the sender (``LearnerLink.send_loop``)
    sends the bytes the spill log holds, from memory or read back from disk, with no encoder or
    decoder called on the way from disk to socket — and the learner gets the identical batch."""
    import runtime.spill_io
    import protocol.transport.uplink_client
    from protocol.messages import Hello, messages_equal
    from protocol.spaces import ArraySpec
    from protocol.transport import UplinkServer, UplinkServerConfig
    from runtime.config import LinkConfig
    from runtime.learner_link import LearnerLink
    from runtime.quarantine import Quarantine
    from tests.protocol.test_transport import learner_loop

    async def body() -> None:
        server = UplinkServer(UplinkServerConfig())
        endpoint = await server.start()
        outbox = open_outbox(tmp_path / "spill")
        outbox.start()
        spec = ArraySpec(dtype="float32", shape=(2,))
        hello = Hello(session_id=outbox.session_id, robot="sim", task="t", observation_space={"proprio": spec},
                      action_space=spec, config_hash="h", next_seq=0, oldest_seq=0)
        link_config = LinkConfig(learner=endpoint, connect_retry_s=0.1)
        link = LearnerLink(link_config, outbox, Quarantine(tmp_path / "quarantine"),
                           hello=lambda: hello, stats=lambda: None)
        sent_frames: list[list[object]] = []
        send_encoded = link.client.send_encoded
        link.client.send_encoded = lambda frames: sent_frames.append(list(frames)) or send_encoded(frames)
        got: list[TransitionBatch] = []
        learner = asyncio.ensure_future(learner_loop(server, got))
        sent: list[TransitionBatch] = []

        async def put_and_send(count: int) -> None:
            for i in range(count):
                sent.append(steps(outbox, 3, float(len(sent))))
                outbox.put_steps(sent[-1])
            await until(lambda: outbox.unwritten_steps == 0)
            if not outbox._connected:
                assert outbox.memory_bytes == 0  # a disconnect dropped the memory copies: all on disk
                for module in (runtime.spill_io, protocol.transport.uplink_client):
                    monkeypatch.setattr(module, "encode", _forbidden)  # the writer is done encoding
                monkeypatch.setattr(runtime.spill_io, "decode", _forbidden)
                outbox.set_connected(True)
            sender = asyncio.ensure_future(link.send_loop())
            await until(lambda: len(got) == len(sent))
            sender.cancel()

        try:
            await link.connect()  # the hello is encoded here, before the send path is watched
            await put_and_send(2)  # sent from memory
            outbox.set_connected(False)
            await put_and_send(2)  # read back from disk
            assert sent_frames == [[outbox.spill.read(seq)] for seq in (0, 3, 6, 9)]  # the bytes written
            assert all(messages_equal(a, b) for a, b in zip(got, sent, strict=True)) and outbox.lost_steps == 0
        finally:
            learner.cancel()
            link.close()
            server.close()
            outbox.close()
    run(body)


def test_a_batch_over_one_frames_limit_goes_multipart_from_memory_and_from_disk(tmp_path: Path) -> None:
    from protocol.codec import OUT_OF_BAND_BYTES
    from protocol.messages import messages_equal

    async def body() -> None:
        outbox = open_outbox(tmp_path, max_frame_bytes=20_000)
        outbox.start()
        n = OUT_OF_BAND_BYTES // 8 + 1  # proprio, actions (n, 2) float32 and timestamps: out of band
        try:
            outbox.set_connected(True)
            sent = []
            for i, size in enumerate((2, n, n)):
                if i == 2:
                    await until(lambda: outbox.unwritten_steps == 0)
                    outbox.set_connected(False)  # the third is written with no memory copy
                sent.append(steps(outbox, size, float(i)))
                outbox.put_steps(sent[-1])
            await until(lambda: outbox.unwritten_steps == 0 and outbox.memory_bytes == 0)
            outbox.set_connected(True)
            outbox.rewind(0)
            outs = []
            for _ in sent:
                async with asyncio.timeout(5):
                    outs.append(await outbox.next_batch())
            assert [len(o.frames) for o in outs] == [1, 4, 4]  # header + proprio, actions, timestamps
            assert all(messages_equal(decode(o.frames), b) for o, b in zip(outs, sent))
        finally:
            outbox.close()
    run(body)


def test_the_quarantine_gets_the_refused_steps_decoded_from_memory_or_disk(tmp_path: Path) -> None:
    async def body() -> None:
        outbox = open_outbox(tmp_path)
        outbox.start()
        try:
            outbox.set_connected(True)
            sent = []
            for i in range(3):
                sent.append(steps(outbox, 3, float(i)))
                outbox.put_steps(sent[-1])
            await until(lambda: outbox.unwritten_steps == 0)
            expected = np.concatenate([b.actions for b in sent])[1:8]
            for connected in (True, False):  # the records in memory, then only on disk
                outbox.set_connected(connected)
                got = await outbox.steps_in(1, 8)
                assert [(b.first_seq, b.end_seq) for b in got] == [(1, 3), (3, 6), (6, 8)]
                assert np.array_equal(np.concatenate([b.actions for b in got]), expected)
            assert outbox.memory_bytes == 0
        finally:
            outbox.close()
    run(body)


def test_a_spilled_record_of_another_session_is_lost_loudly_never_sent(tmp_path: Path) -> None:
    """A state file lost with its records kept gives a new session over the old one's records:
    they must not go out under the new session's hello (the learner would drop them as another
    session's, and the stream would stall)."""
    from runtime.spill_io import encode_batch

    async def body() -> None:
        spill = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=2000, max_bytes=1_000_000))
        stray = dataclasses.replace(steps(Outbox(spill), 3, 0.0), session_id="another")
        spill.append(0, encode_batch(stray), 3)
        outbox = Outbox(spill)
        outbox.start()
        try:
            outbox.put_steps(steps(outbox, 3, 1.0))
            await until(lambda: outbox.unwritten_steps == 0)
            outbox.set_connected(True)
            outbox.rewind(0)
            async with asyncio.timeout(5):
                out = await outbox.next_batch()
            assert out.first_seq == 3 and outbox.lost_steps == 3 and outbox.head_lost
        finally:
            outbox.close()
    run(body)


def test_check_record_knows_encode_batchs_records_and_decodes_any_other_layout() -> None:
    import msgpack

    from runtime.errors import SpillError
    from runtime.spill_io import check_record, encode_batch, record_prefix

    for session, seq in (("s", 0), ("a" * 40, 127), ("é", 128), ("x", 2**32), ("x", 2**53 - 2)):
        batch = TransitionBatch(session_id=session, first_seq=seq, observations={"p": np.zeros((2, 2), np.float32)},
                                actions=np.zeros((2, 2), np.float32), agents=np.zeros(2, np.uint8),
                                timestamps=np.zeros(2), is_first=np.zeros(2, bool), is_last=np.zeros(2, bool))
        record = encode_batch(batch)
        assert record.startswith(record_prefix(session, seq))
        check_record(record, session, seq, 2)
        reordered = msgpack.packb(dict(reversed(msgpack.unpackb(record, raw=False).items())), use_bin_type=True)
        assert not reordered.startswith(record_prefix(session, seq))
        check_record(reordered, session, seq, 2)  # an older writer's field order: decoded, accepted
        for args in ((session + "!", seq, 2), (session, seq + 1, 2), (session, seq, 3)):
            with pytest.raises(SpillError):
                check_record(reordered, *args)
        for other in ((session + "!", seq), (session, seq + 1)):
            with pytest.raises(SpillError):
                check_record(record, *other, 2)
        with pytest.raises(SpillError):
            check_record(record[: len(record) // 2] + b"\x00", "other", seq, 2)
