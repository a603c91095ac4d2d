"""``resetfree-bench``: one entry point for every benchmark.

Each benchmark lives beside what it measures and exposes ``main(argv) -> int``; it logs
progress and prints, as its very last line, one JSON object with its figures.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: subcommand -> (module, one-line description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "protocol": ("protocol.bench", "uplink transitions/s vs a pickle baseline; weight publish latency"),
    "sim": ("simulation.bench_sim", "simulator steps/s per task (state, pixels) and 84x84 frames/s"),
    "learner": ("learner.bench", "REDQ updates/s (pixels, state) vs a naive reference; replay bytes"),
    "runtime": ("simulation.bench_runtime", "control-loop jitter, overruns, inference and swap latency"),
    "learning": ("simulation.bench_learning", "the full pipeline for M minutes: success vs BC"),
    "faults": ("simulation.bench_faults", "learner kills, a partition and malformed frames: nothing lost"),
    "hostile": ("simulation.bench_hostile", "100k hostile messages on control, uplink, weights: all counted"),
    "cube-ood": ("simulation.cube_experiment", "the cube-grasp OOD experiment: BC vs practised policy, ID/OOD"),
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
    module = importlib.import_module(BENCHMARKS[args.name][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
