"""``resetfree-bench protocol``: uplink transitions/s (our transport vs a pickle PUSH/PULL
baseline, sender and receiver in separate processes) and weight publish latency.

Prints progress via logging and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import multiprocessing as mp
import statistics
import sys
import time

import numpy as np
import zmq

from protocol.messages import Ack, Hello, TransitionBatch, Weights, Welcome
from protocol.spaces import ArraySpec
from protocol.transport import (
    UplinkClient, UplinkClientConfig, UplinkServer, UplinkServerConfig, WeightsPublisher, WeightsPublisherConfig,
    WeightsSubscriber, WeightsSubscriberConfig,
)

logger = logging.getLogger(__name__)

#: This module's baseline is the one place allowed to use pickle (see tests/test_source_rules.py).
PICKLE_BASELINE_ONLY = True
BATCH = 64


def _batch(first_seq: int) -> TransitionBatch:
    return TransitionBatch(
        session_id="bench", first_seq=first_seq,
        observations={"wrist": np.full((BATCH, 3, 84, 84), 7, np.uint8),
                      "third_person": np.full((BATCH, 3, 84, 84), 9, np.uint8),
                      "proprio": np.zeros((BATCH, 10), np.float32)},
        actions=np.zeros((BATCH, 7), np.float32), agents=np.zeros(BATCH, np.uint8),
        timestamps=np.zeros(BATCH), is_first=np.zeros(BATCH, bool), is_last=np.zeros(BATCH, bool))


def _hello() -> Hello:
    return Hello(session_id="bench", robot="bench", task="bench",
                 observation_space={"wrist": ArraySpec(dtype="uint8", shape=(3, 84, 84)),
                                    "third_person": ArraySpec(dtype="uint8", shape=(3, 84, 84)),
                                    "proprio": ArraySpec(dtype="float32", shape=(10,))},
                 action_space=ArraySpec(dtype="float32", shape=(7,)), config_hash="", oldest_seq=0, next_seq=0)


async def _receiver(endpoint_q: mp.Queue, result_q: mp.Queue, steps: int) -> None:
    server = UplinkServer(UplinkServerConfig())
    endpoint_q.put(await server.start())
    got, t0 = 0, 0.0
    try:
        while got < steps:
            peer, msg = await server.recv()
            if isinstance(msg, Hello):
                server.send(peer, Welcome(session_id=msg.session_id, accepted=True, reason="", resume_seq=0,
                                          net_config={}, weights_endpoint=""))
                t0 = time.perf_counter()
            elif isinstance(msg, TransitionBatch):
                got += msg.size
                server.send(peer, Ack(session_id=msg.session_id, seq=msg.end_seq, trained_through=0))
        result_q.put(got / (time.perf_counter() - t0))
    finally:
        server.close()


def _receiver_main(endpoint_q: mp.Queue, result_q: mp.Queue, steps: int) -> None:
    asyncio.run(_receiver(endpoint_q, result_q, steps))


async def _sender(endpoint: str, steps: int) -> None:
    client = UplinkClient(UplinkClientConfig(endpoint=endpoint, sndhwm=16), _hello())
    try:
        await client.connect()
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(client.run())
            seq, acked = 0, 0
            while acked < steps:
                if seq < steps and seq - acked < 32 * BATCH and client.send(_batch(seq)):
                    seq += BATCH
                    continue
                msg = await client.recv(timeout=1.0)
                if isinstance(msg, Ack):
                    acked = max(acked, msg.seq)
            runner.cancel()
    finally:
        client.close()


def _pickle_receiver(endpoint_q: mp.Queue, result_q: mp.Queue, steps: int) -> None:
    pickle = importlib.import_module("pickle")  # the benchmark baseline only (PICKLE_BASELINE_ONLY)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        endpoint_q.put(f"tcp://127.0.0.1:{port}")
        got, t0 = 0, None
        while got < steps:
            obj = pickle.loads(sock.recv())
            t0 = t0 or time.perf_counter()
            got += len(obj["actions"])
        result_q.put((got - BATCH) / (time.perf_counter() - t0))
    finally:
        sock.close(linger=0)
        ctx.term()


def _pickle_sender(endpoint: str, steps: int) -> None:
    pickle = importlib.import_module("pickle")  # the benchmark baseline only (PICKLE_BASELINE_ONLY)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    try:
        sock.connect(endpoint)
        for seq in range(0, steps, BATCH):
            b = _batch(seq)
            sock.send(pickle.dumps({"observations": b.observations, "actions": b.actions, "agents": b.agents,
                                    "timestamps": b.timestamps, "is_first": b.is_first, "is_last": b.is_last},
                                   protocol=5))
    finally:
        sock.close(linger=-1)
        ctx.term()


def _measure(receiver, sender, steps: int) -> float:
    ctx = mp.get_context("spawn")
    endpoint_q, result_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=receiver, args=(endpoint_q, result_q, steps), daemon=True)
    proc.start()
    try:
        sender(endpoint_q.get(timeout=30), steps)
        return float(result_q.get(timeout=120))
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()


async def _weights_latency(nbytes: int, repeats: int) -> float:
    pub = WeightsPublisher(WeightsPublisherConfig())
    sub = WeightsSubscriber(WeightsSubscriberConfig(endpoint=await pub.start()))
    sub.connect()
    n = nbytes // 4
    tensors = {f"layer{i}.weight": np.random.default_rng(i).standard_normal(n // 8).astype(np.float32)
               for i in range(8)}
    times = []
    try:
        await asyncio.sleep(0.3)
        for v in range(repeats + 2):
            w = Weights.create(agent="forward", version=v, tensors=tensors)
            t0 = time.perf_counter()
            pub.publish(w)
            async with asyncio.timeout(10):
                got = await sub.recv()  # decoded and checksum-verified
            assert got.version == v
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        sub.close()
        pub.close()
    return statistics.median(times[2:])


def main(argv: list[str]) -> int:
    """Runs the benchmark; prints one JSON object as the last line; returns 0."""
    parser = argparse.ArgumentParser(prog="resetfree-bench protocol", description=__doc__.replace("``", ""))
    parser.add_argument("--quick", action="store_true", help="a short run (fewer steps and repeats)")
    parser.add_argument("--steps", type=int, default=None, help="transitions per throughput run")
    args = parser.parse_args(argv)
    steps = args.steps or (BATCH * 100 if args.quick else BATCH * 1000)
    repeats = 5 if args.quick else 30
    logger.info("uplink: %d transitions (two 3x84x84 uint8 frames each) through the transport", steps)
    ours = _measure(_receiver_main, lambda ep, n: asyncio.run(_sender(ep, n)), steps)
    logger.info("uplink: %.0f transitions/s; now the pickle PUSH/PULL baseline", ours)
    baseline = _measure(_pickle_receiver, _pickle_sender, steps)
    logger.info("pickle baseline: %.0f transitions/s; now weight latency", baseline)
    w5 = asyncio.run(_weights_latency(5 * 2**20, repeats))
    w20 = asyncio.run(_weights_latency(20 * 2**20, repeats))
    print(json.dumps({"transitions_per_s": round(ours), "pickle_transitions_per_s": round(baseline),
                      "weights_5mb_p50_ms": round(w5, 2), "weights_20mb_p50_ms": round(w20, 2),
                      "steps": steps, "batch": BATCH, "quick": args.quick}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
