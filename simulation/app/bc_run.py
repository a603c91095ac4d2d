"""``resetfree-sim``'s BC baseline, from the parent's side: the child that trains and evaluates
it (``python -m simulation.app.bc_baseline``), its result (``RUN_DIR/bc.json``), and what the
console says about it. A run that has ``bc.json`` already (a resumed run) reads it instead."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Literal

from simulation.app.bc_baseline import bc_seeds_text
from simulation.app.processes import ChildProcess
from simulation.app.progress import ProgressDisplay

logger = logging.getLogger(__name__)

BC_WAIT_S = 600.0
"""How long a clean end waits for the BC child to finish."""


class BCBaselineRun:
    """See the module docstring. Call its methods on the event loop."""

    def __init__(self, run_dir: Path, display: ProgressDisplay) -> None:
        self.run_dir, self.display = Path(run_dir), display
        self.child: ChildProcess | None = None
        self.success: float | None = None
        """BC's success rate (the mean over its seeds), once known."""
        self.success_seeds: list[float] | None = None
        self._seeds_text = ""

    def start(self, command: list[str], *, wanted: bool) -> None:
        """Reads ``bc.json`` when the run has one; otherwise starts the child (when ``wanted``)."""
        if (self.run_dir / "bc.json").exists():
            self._read()
        elif wanted:
            self.child = ChildProcess("bc", command, self.run_dir / "logs" / "bc.log")
            self.child.start()

    def check(self) -> None:
        """Reads the result once the child has finished, or reports its failure (once)."""
        if self.child is None or self.success is not None:
            return
        code = self.child.poll()
        if code == 0:
            self._read()
            self.display.message(f"BC baseline: success {self.success:.0%}{self._seeds_text}")
        elif code is not None and not self.child.expected_exit:
            self.child.expected_exit = True  # report once
            self.display.message(f"BC baseline failed with code {code}:\n{self.child.tail(10)}")

    def state(self, *, interrupted: bool) -> Literal["training", "failed", "off"]:
        """What the BC baseline is doing while its success is unknown (``Snapshot.bc_state``)."""
        if self.child is None:
            return "off"  # not asked for (or bc.json there but unreadable: its warning says so)
        code = self.child.poll()
        if code == -signal.SIGTERM and interrupted:
            return "off"  # stopped with the run, not failed (it trains again on --resume)
        return "training" if code in (None, 0) else "failed"  # 0: bc.json read next

    async def finish(self, *, wait: bool) -> None:
        """Stops the child (after waiting for it to finish, when ``wait``) and reads its result."""
        if self.child is None:
            return
        if self.child.running:
            if wait:
                self.display.message("waiting for the BC baseline …")
                await self.child.wait(BC_WAIT_S)
            await self.child.stop(10.0)
        self.check()

    def exit_code(self) -> int | None:
        """The child's exit code (None: running, or never started)."""
        return None if self.child is None else self.child.poll()

    def _read(self) -> None:
        try:
            data = json.loads((self.run_dir / "bc.json").read_text(encoding="utf-8"))
            self.success = float(data["success_rate"])
            self.success_seeds = [float(p["success_rate"]) for p in data.get("per_seed", [])] or [self.success]
            self._seeds_text = bc_seeds_text(data)
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("bc.json unreadable: %s", e)
