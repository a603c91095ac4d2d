"""``resetfree-bench``: one entry point for every benchmark.

Each benchmark lives beside what it measures and exposes ``main(argv) -> int``; it logs
progress and prints, as its very last line, one JSON object with its figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

Bench = Callable[[list[str]], int | None]


# Each benchmark is imported when it is chosen, so ``resetfree-bench faults`` never loads torch
# or MuJoCo for nothing; the imports are plain statements, which tests/test_layering.py checks.
def _protocol(argv: list[str]) -> int | None:
    from protocol.bench import main as run
    return run(argv)


def _sim(argv: list[str]) -> int | None:
    from simulation.bench_sim import main as run
    return run(argv)


def _learner(argv: list[str]) -> int | None:
    from learner.bench import main as run
    return run(argv)


def _runtime(argv: list[str]) -> int | None:
    from simulation.drills.bench_runtime import main as run
    return run(argv)


def _learning(argv: list[str]) -> int | None:
    from simulation.drills.bench_learning import main as run
    return run(argv)


def _faults(argv: list[str]) -> int | None:
    from simulation.drills.bench_faults import main as run
    return run(argv)


def _hostile(argv: list[str]) -> int | None:
    from simulation.drills.bench_hostile import main as run
    return run(argv)


def _cube_ood(argv: list[str]) -> int | None:
    from simulation.drills.cube_experiment import main as run
    return run(argv)


#: subcommand -> (runner, one-line description)
BENCHMARKS: dict[str, tuple[Bench, str]] = {
    "protocol": (_protocol, "uplink transitions/s vs a pickle baseline; weight publish latency"),
    "sim": (_sim, "simulator steps/s per task (state, pixels) and 84x84 frames/s"),
    "learner": (_learner, "REDQ updates/s (pixels, state) vs a naive reference; replay bytes"),
    "runtime": (_runtime, "control-loop jitter, overruns, inference and swap latency"),
    "learning": (_learning, "the full pipeline for M minutes: success vs BC"),
    "faults": (_faults, "learner kills, a partition and malformed frames: nothing lost"),
    "hostile": (_hostile, "100k hostile messages on control, uplink, weights: all counted"),
    "cube-ood": (_cube_ood, "the cube-grasp OOD experiment: BC vs practised policy, ID/OOD"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``resetfree-bench NAME [ARGS...]`` to the named benchmark.

    Returns the benchmark's exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="resetfree-bench",
        description="Benchmarks; each prints one JSON object as its last line.",
        epilog="\n".join(f"  {name:<9} {desc}" for name, (_, desc) in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    if not argv or argv[0] in ("-h", "--help"):
        parser.parse_args(argv or ["--help"])
    args, rest = parser.parse_known_args(argv[:1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(BENCHMARKS[args.name][0](argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
