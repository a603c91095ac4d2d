"""``resetfree-learner`` / ``python -m learner``: the learner service (see :mod:`learner.service`).

Configuration layers: profile → ``--config`` TOML → ``--set`` overrides → the explicit flags
below (``--bind``, ``--mode``, ...). With ``--resume RUN_DIR`` and no profile/config/``--set``,
the run's saved ``config.json`` is used. Port 0 picks a free port; the bound endpoints go
to ``RUN_DIR/endpoints.json``. SIGTERM/SIGINT checkpoint and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import signal
import sys
from pathlib import Path

from learner.config import LearnerConfig, add_config_arguments, config_from_args
from learner.demo_dir import DemoDirError, load_demo_dir
from learner.errors import LearnerError
from learner.placement import parse_cpus
from learner.service import LearnerService, serve
from protocol.keys import server_keys

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser (every flag has help)."""
    p = argparse.ArgumentParser(prog="resetfree-learner", description="MEDAL++ learner: ingest, train, publish.")
    add_config_arguments(p)
    p.add_argument("--demos", type=Path, required=True, help="directory of demo .npz files (meta.direction says "
                   "forward/backward)")
    p.add_argument("--bind", default=None, help="uplink ROUTER endpoint (default tcp://127.0.0.1:5555; port 0: free)")
    p.add_argument("--weights-bind", default=None, help="weights PUB endpoint (default tcp://127.0.0.1:5556)")
    p.add_argument("--control-bind", default=None, help="control endpoint (default tcp://127.0.0.1:5557)")
    p.add_argument("--keys", type=Path, default=None, help="CURVE key directory (resetfree-keys generate)")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR: latest good checkpoint + ingest journal")
    p.add_argument("--mode", choices=("lockstep", "realtime"), default=None,
                   help="lockstep: every owed update before trained_through advances; realtime: free-run "
                        "(default realtime)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None, help="torch device (default auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: service.torch_threads = 1, leaving a core to the runtime)")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="CPUs the learner may use, e.g. '0' or '0,2' (default: all); on a PC that also "
                        "runs the runtime, keep it off the runtime's --cpu")
    p.add_argument("--seed", type=int, default=None, help="seed of torch/numpy/python RNGs")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level")
    return p


def resolve_config(args: argparse.Namespace) -> tuple[LearnerConfig, Path]:
    """Returns the config and the run directory from parsed args. Raises ValueError/OSError."""
    run_dir = args.resume or args.run_dir
    if run_dir is None:
        run_dir = Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    saved = Path(run_dir) / "config.json"
    # profile (or the resumed run's config) -> file -> the flags below -> --set, applied last
    if args.resume is not None and saved.is_file() and args.profile is None and args.config is None:
        cfg = LearnerConfig.from_dict(json.loads(saved.read_text())["config"])
    else:
        cfg = config_from_args(argparse.Namespace(**{**vars(args), "overrides": []}))
    sets = [f"service.run_dir={json.dumps(str(run_dir))}"]
    for flag, key in (("bind", "uplink"), ("weights_bind", "weights"), ("control_bind", "control"),
                      ("mode", "mode"), ("device", "device")):
        if getattr(args, flag) is not None:
            sets.append(f"service.{key}={json.dumps(getattr(args, flag))}")
    if args.threads is not None:
        sets.append(f"service.torch_threads={args.threads}")
    if args.cpus is not None:
        sets.append(f"service.cpus={json.dumps(list(parse_cpus(args.cpus)))}")
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    return cfg.with_overrides([*sets, *args.overrides]), Path(run_dir)


def main(argv: list[str] | None = None) -> int:
    """Runs the learner until SIGTERM/SIGINT; returns the exit status (0 clean, 2 bad input, 1 fault)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, run_dir = resolve_config(args)
        demos = load_demo_dir(args.demos)
        keys = server_keys(args.keys) if args.keys is not None else None
    except (ValueError, OSError, DemoDirError) as e:
        print(f"resetfree-learner: {e}", file=sys.stderr)
        return 2
    service = LearnerService(cfg, demos, run_dir=run_dir, resume=args.resume is not None, keys=keys)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop)
        await serve(service)

    try:
        asyncio.run(run())
    except LearnerError as e:
        logger.error("learner failed: %s", e)
        return 1
    except BaseExceptionGroup as eg:
        failures, rest = eg.split(LearnerError)
        if rest is not None:
            raise
        for e in failures.exceptions if failures else ():
            logger.error("learner failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
