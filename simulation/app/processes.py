"""Child processes of ``resetfree-sim`` and the benchmarks: start, signal, stop with a
deadline, log tails, the ``endpoints.json`` a child writes, and status polls over its
control endpoint.

* :class:`ChildProcess` runs one process in its own session (so a terminal's Ctrl-C reaches
  only the parent) with stdout and stderr appended to a log file.
* :func:`read_endpoints` / :func:`wait_for_endpoints` / :func:`pick_endpoint` read the
  ``endpoints.json`` a child writes once its sockets are bound (every port 0).
* :class:`StatusPoller` asks one control endpoint for ``status`` (or an ``estop``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from signal import SIGTERM  # in the class body the method signal() hides the module

from protocol.errors import ProtocolError
from protocol.messages import Command
from protocol.transport import ControlClient, ControlClientConfig
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)


class ProcessError(SimulationError):
    """A child that does not come up or is started twice, or a malformed endpoints file."""


class FaultDrillError(ProcessError):
    """A drill part could not do its job: a child that does not come up, a bad endpoints file,
    a frame the generator could not make, an unreadable journal."""


# ============================================================================ environment
def child_env() -> dict[str, str]:
    """Returns the environment for children: one BLAS thread, headless MuJoCo, unbuffered."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def python_module(module: str) -> list[str]:
    """Returns the argv prefix running ``module`` with this interpreter."""
    return [sys.executable, "-m", module]


# ============================================================================ one child
class ChildProcess:
    """One child process with its output in a log file; stopped with a deadline.

    The child runs in its own session (``start_new_session``). ``expected_exit`` is set
    whenever the parent signals or stops it, so any other exit is a crash. Methods never
    block longer than their ``timeout``.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        """The child's environment; None: :func:`child_env` at each start."""
        self._proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = False
        """Set when the parent asked this incarnation to exit (or it was meant to finish)."""
        self.starts = 0
        """Incarnations started."""

    def start(self, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
        """Starts (a new incarnation of) the child, appending its stdout and stderr to
        ``log_path``; ``argv`` replaces the command line, ``env`` the environment for this
        start. Does not block. Raises ProcessError when the child already runs."""
        if self.running:
            raise ProcessError(f"{self.name} is already running")
        if argv is not None:
            self.argv = list(argv)
        if env is None:
            env = self.env if self.env is not None else child_env()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=dict(env), start_new_session=True)
        self.expected_exit = False
        self.starts += 1
        logger.info("started %s (pid %d): %s", self.name, self._proc.pid, " ".join(self.argv))

    @property
    def pid(self) -> int | None:
        """Returns the current incarnation's pid, or None before :meth:`start`."""
        return None if self._proc is None else self._proc.pid

    def poll(self) -> int | None:
        """Returns the exit code, or None while the child runs (or was never started)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        """Returns whether the child was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def crashed(self) -> bool:
        """Returns whether the current incarnation exited without the parent asking it to."""
        return self.poll() is not None and not self.expected_exit

    def signal(self, sig: int) -> None:
        """Sends ``sig`` (marking the exit as expected) when the child runs. Does not block."""
        self.expected_exit = True
        if self._proc is not None and self.running:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:  # exited between the check and the signal
                logger.debug("%s exited before %s", self.name, signal.Signals(sig).name)

    async def wait(self, timeout: float) -> int | None:
        """Waits up to ``timeout`` s for the child to exit; returns its exit code or None."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.poll()

    async def stop(self, timeout: float, sig: int = SIGTERM) -> int | None:
        """Sends ``sig`` and waits up to ``timeout`` s; kills the child when it is still there.

        Returns the exit code (negative: killed by that signal), None when never started.
        """
        self.expected_exit = True
        if self._proc is None:
            return None
        self.signal(sig)
        code = await self.wait(timeout)
        if code is None:
            logger.warning("%s did not exit within %.0f s of %s: killing it", self.name, timeout,
                           signal.Signals(sig).name)
            self._proc.kill()
            code = await self.wait(5.0)
        return code

    def tail(self, lines: int = 20) -> str:
        """Returns the last ``lines`` lines of the child's log ('' when unreadable)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16_384))
                text = f.read().decode("utf-8", errors="replace")
        except OSError as e:
            logger.debug("cannot read %s: %s", self.log_path, e)
            return ""
        return "\n".join(text.splitlines()[-lines:])


def count_tracebacks(paths: Sequence[Path]) -> int:
    """Returns how many Python tracebacks the log files hold (missing files count 0). Blocks on disk."""
    total = 0
    for path in paths:
        if path.exists():
            total += path.read_text(errors="replace").count("Traceback (most recent call last)")
    return total


# ============================================================================ endpoints
def read_endpoints(path: Path) -> dict[str, str] | None:
    """Returns the endpoints a child wrote to ``path`` (name → endpoint), None while absent.

    Accepts a flat object of strings or one nested under ``"endpoints"``; other values are
    dropped. Raises ProcessError for a file that exists but is not such an object (a child
    writes it atomically, so a partial file is never seen).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ProcessError(f"{path}: unreadable endpoints file: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("endpoints"), dict):
        data = data["endpoints"]
    if not isinstance(data, dict):
        raise ProcessError(f"{path}: expected a JSON object of endpoints")
    return {str(k): v for k, v in data.items() if isinstance(v, str)}


def pick_endpoint(endpoints: Mapping[str, str], *names: str) -> str:
    """Returns the first of ``names`` present in ``endpoints`` (also tried with ``_endpoint``
    appended). Raises ProcessError naming what is there when none is."""
    for name in names:
        for key in (name, f"{name}_endpoint"):
            if key in endpoints:
                return endpoints[key]
    raise ProcessError(f"endpoints file lacks {names[0]!r}: has {sorted(endpoints)}")


def tcp_port(endpoint: str) -> int:
    """Returns the port of a ``tcp://host:port`` endpoint; raises ProcessError otherwise."""
    try:
        return int(endpoint.rsplit(":", 1)[1])
    except (IndexError, ValueError) as e:
        raise ProcessError(f"not a tcp://host:port endpoint: {endpoint!r}") from e


async def wait_for_endpoints(path: Path, child: ChildProcess, timeout: float) -> dict[str, str]:
    """Waits until ``child`` has written ``path``; returns the endpoints.

    Raises ProcessError (with the tail of the child's log) when the child exits first or
    ``timeout`` s pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read_endpoints(path)
        if found:
            return found
        code = child.poll()
        if code is not None:
            raise ProcessError(f"{child.name} exited with code {code} before writing {path}; "
                               f"see {child.log_path}:\n{child.tail()}")
        await asyncio.sleep(0.1)
    raise ProcessError(f"{child.name} wrote no {path} within {timeout:.0f} s; see {child.log_path}:\n{child.tail()}")


# ============================================================================ status
def status_int(detail: Mapping[str, object] | None, key: str) -> int:
    """Returns ``detail[key]`` of a status reply as an int: 0 when the reply or the field is
    missing or not a number (a boolean is not one)."""
    value = (detail or {}).get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class StatusPoller:
    """Sends commands to one control endpoint; remembers the last ``status`` answer."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._client = ControlClient(ControlClientConfig(endpoint=endpoint))
        self._request = 0
        self.last: dict[str, object] = {}
        """The last status detail received."""

    async def request(self, kind: str, timeout: float = 2.0) -> dict[str, object] | None:
        """Sends a ``kind`` command (``status``, ``estop``…); returns the answer's detail, or
        None when no answer came within ``timeout`` s. Waits at most ``timeout`` s."""
        self._request += 1
        try:
            status = await self._client.request(Command(kind=kind, agent=None, request_id=self._request),
                                                timeout=timeout)
        except ProtocolError as e:
            logger.debug("%s %s: %s", self.endpoint, kind, e)
            return None
        return dict(status.detail)

    async def poll(self, timeout: float = 2.0) -> dict[str, object] | None:
        """Returns the status detail (also kept in :attr:`last`), or None when no answer
        came within ``timeout`` s."""
        detail = await self.request("status", timeout)
        if detail is not None:
            self.last = detail
        return detail

    def close(self) -> None:
        """Closes the client socket (linger 0). Idempotent."""
        self._client.close()
