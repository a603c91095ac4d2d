"""One policy per agent, hot-swapped atomically between ticks.

:meth:`PolicySlot.offer` verifies a weights blob off the event loop (a one-thread executor
owned by the slot): agent known, tensor names/shapes/dtypes equal to the module's
``state_dict``, all finite, checksum correct, version strictly newer. It then loads the
tensors into a *spare* module (double buffering: the active module is never written) and,
back on the event loop, swaps one reference. ``act`` runs on the event loop, so a swap can
never happen in the middle of an inference and never costs a tick. A bad blob is logged,
counted and rejected; the current policy stays.

The weights object is ``protocol.messages.Weights`` or anything with ``agent`` (``"forward"``/
``"backward"`` or 0/1), ``version: int``, ``tensors: dict[str, np.ndarray]`` and ``sha256: str``.
The checksum is ``protocol.messages.weights_sha256`` (re-exported here).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from protocol.messages import Weights, weights_sha256
from runtime.errors import PolicyError, WeightsRejected
from runtime.schedule import AGENT_NAMES, agent_index
from runtime.stats import Ring

logger = logging.getLogger(__name__)

__all__ = ["OfferResult", "PolicySlot", "PolicySlotConfig", "weights_sha256"]


@dataclass(frozen=True, kw_only=True)
class PolicySlotConfig:
    """Limits and statistics of the policy slot."""

    max_blob_bytes: int = 256 * 2**20
    """Largest accepted weights blob (sum of tensor bytes)."""
    stats_window: int = 2000
    """Inference-time samples kept for percentiles."""

    def __post_init__(self) -> None:
        if self.max_blob_bytes < 1:
            raise ValueError(f"max_blob_bytes: must be positive, got {self.max_blob_bytes}")
        if self.stats_window < 1:
            raise ValueError(f"stats_window: must be positive, got {self.stats_window}")


@dataclass(frozen=True)
class OfferResult:
    """Outcome of one :meth:`PolicySlot.offer`."""

    accepted: bool
    """Whether the blob became the active policy."""
    agent: int | None
    """Agent the blob was for (None when unreadable)."""
    version: int | None
    """Version of the blob (None when unreadable)."""
    reason: str
    """Why it was rejected (empty when accepted)."""
    swap_to_active_ms: float
    """Offer call → active policy, in ms (also measured for rejections)."""


@dataclass(frozen=True)
class _Active:
    module: nn.Module
    version: int


class PolicySlot:
    """Holds the active policy module of each agent; see the module docstring."""

    def __init__(self, build: Callable[[], nn.Module], config: PolicySlotConfig | None = None) -> None:
        """``build()`` returns a fresh policy module (e.g. ``build_actor(...)``); it is called
        once now for the expected ``state_dict`` layout and later in the worker thread."""
        self.config = config or PolicySlotConfig()
        self._build = build
        template = build()
        self._layout = {name: (tuple(t.shape), _numpy_dtype(t)) for name, t in template.state_dict().items()}
        self._active: dict[int, _Active] = {}
        self._spares: dict[int, nn.Module] = {0: template}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-verify")
        self.inference_s = Ring(self.config.stats_window)
        self.swap_ms = Ring(100)
        self.accepted = 0
        self.rejected = 0
        self.last_reject_reason = ""

    @classmethod
    def for_actor(cls, obs_spec: Mapping[str, tuple[tuple[int, ...], str]], action_dim: int,
                  net_config: Mapping[str, Any], config: PolicySlotConfig | None = None) -> PolicySlot:
        """Returns a slot for ``learner.networks.build_actor(obs_spec, action_dim, net_config)``.

        Raises ValueError when the learner's network config is invalid.
        """
        from learner.networks import build_actor

        return cls(lambda: build_actor(obs_spec, action_dim, net_config).eval(), config)

    # ------------------------------------------------------------------ queries
    def has_policy(self, agent: int) -> bool:
        """Whether weights for ``agent`` (0/1) are loaded."""
        return agent in self._active

    def version(self, agent: int) -> int | None:
        """Version of ``agent``'s active weights, None before the first."""
        active = self._active.get(agent)
        return None if active is None else active.version

    def counters(self) -> dict[str, float]:
        """Returns versions, accepted/rejected counts and swap/inference times for stats."""
        out: dict[str, float] = {"accepted": self.accepted, "rejected": self.rejected,
                                 "swap_to_active_ms_last": self.swap_ms.values()[-1] if len(self.swap_ms) else 0.0,
                                 "inference_p50_ms": self.inference_s.percentile(50) * 1e3}
        for agent, active in self._active.items():
            out[f"version_{AGENT_NAMES[agent]}"] = active.version
        return out

    # ------------------------------------------------------------------ swap
    async def offer(self, weights: Any) -> OfferResult:
        """Verifies ``weights`` in the slot's worker thread and, when valid, makes them active.

        Returns an :class:`OfferResult`; never raises for a bad blob. The swap itself is one
        reference assignment on the event loop, so it always happens between ticks.
        """
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            agent, version, module = await loop.run_in_executor(self._executor, self._prepare, weights)
            self._install(agent, version, module)
        except WeightsRejected as e:
            return self._reject(weights, str(e), started)
        return self._accept(agent, version, started)

    def offer_blocking(self, weights: Any) -> OfferResult:
        """Like :meth:`offer` but verifies on the calling thread; for use before the loop runs
        (e.g. restoring weights at start-up). Blocks for the verification (milliseconds)."""
        started = time.perf_counter()
        try:
            agent, version, module = self._prepare(weights)
            self._install(agent, version, module)
        except WeightsRejected as e:
            return self._reject(weights, str(e), started)
        return self._accept(agent, version, started)

    def close(self) -> None:
        """Stops the worker thread (waits for a verification in progress)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, weights: Any) -> tuple[int, int, nn.Module]:
        """Verifies and loads into a spare module (worker thread). Raises WeightsRejected."""
        agent, version, tensors = self._verify(weights)
        with self._lock:
            module = self._spares.pop(agent, None)
            if module is None:  # both agents share one architecture
                module = self._spares.pop(1 - agent, None)
        if module is None:
            module = self._build()
        try:
            state = {name: torch.from_numpy(_writable(array)) for name, array in tensors.items()}
            module.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, TypeError) as e:
            raise WeightsRejected(f"load_state_dict failed: {e}") from e
        module.eval()
        return agent, version, module

    def _verify(self, weights: Any) -> tuple[int, int, dict[str, np.ndarray]]:
        try:
            agent = agent_index(getattr(weights, "agent"))
            version = getattr(weights, "version")
            tensors = getattr(weights, "tensors")
            checksum = getattr(weights, "sha256")
        except (AttributeError, ValueError) as e:
            raise WeightsRejected(f"not a weights blob: {e}") from e
        if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 0:
            raise WeightsRejected(f"version: expected a non-negative int, got {version!r}")
        current = self.version(agent)
        if current is not None and version <= current:
            raise WeightsRejected(f"version {version} is not newer than active {current}")
        if not isinstance(tensors, Mapping) or set(tensors) != set(self._layout):
            names = set(tensors) if isinstance(tensors, Mapping) else set()
            raise WeightsRejected(f"tensor names differ: missing {sorted(set(self._layout) - names)[:5]}, "
                                  f"unexpected {sorted(names - set(self._layout))[:5]}")
        total = 0
        for name, (shape, dtype) in self._layout.items():
            array = tensors[name]
            if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != dtype:
                got = (array.shape, array.dtype) if isinstance(array, np.ndarray) else type(array).__name__
                raise WeightsRejected(f"tensors[{name!r}]: expected {shape} {dtype}, got {got}")
            total += array.nbytes
            if total > self.config.max_blob_bytes:
                raise WeightsRejected(f"blob exceeds max_blob_bytes={self.config.max_blob_bytes}")
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise WeightsRejected(f"tensors[{name!r}]: non-finite values")
        already_checked = isinstance(weights, Weights) and weights.verified  # by the subscriber
        if not isinstance(checksum, str) or (not already_checked and weights_sha256(tensors) != checksum):
            raise WeightsRejected("sha256 mismatch")
        return agent, int(version), dict(tensors)

    def _install(self, agent: int, version: int, module: nn.Module) -> None:
        current = self.version(agent)
        if current is not None and version <= current:  # a newer blob won the race
            self._recycle(agent, module)
            raise WeightsRejected(f"version {version} is not newer than active {current}")
        previous = self._active.get(agent)
        self._active[agent] = _Active(module=module, version=version)  # the atomic swap
        if previous is not None:
            self._recycle(agent, previous.module)

    def _recycle(self, agent: int, module: nn.Module) -> None:
        with self._lock:
            self._spares.setdefault(agent, module)

    def _accept(self, agent: int, version: int, started: float) -> OfferResult:
        elapsed = (time.perf_counter() - started) * 1e3
        self.accepted += 1
        self.swap_ms.add(elapsed)
        logger.info("policy: %s weights v%d active (%.1f ms after offer)", AGENT_NAMES[agent], version, elapsed)
        return OfferResult(accepted=True, agent=agent, version=version, reason="", swap_to_active_ms=elapsed)

    def _reject(self, weights: Any, reason: str, started: float) -> OfferResult:
        self.rejected += 1
        self.last_reject_reason = reason
        version = getattr(weights, "version", None)
        try:
            agent: int | None = agent_index(getattr(weights, "agent", None))
        except ValueError:
            agent = None
        logger.warning("policy: rejected weights (agent %s, version %r): %s", agent, version, reason)
        return OfferResult(accepted=False, agent=agent, version=version if isinstance(version, int) else None,
                           reason=reason, swap_to_active_ms=(time.perf_counter() - started) * 1e3)

    # ------------------------------------------------------------------ act
    def act(self, agent: int, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """Returns the deterministic action ``(A,)`` float32 of ``agent``'s policy.

        Runs on the calling thread (the event loop; ~1–2 ms for the pixel actor on CPU).
        Raises PolicyError when no weights are loaded or the module fails on the input.
        """
        active = self._active.get(agent)
        if active is None:
            raise PolicyError(f"no weights loaded for the {AGENT_NAMES[agent]} agent")
        started = time.perf_counter()
        try:
            batch = {name: torch.from_numpy(_writable(np.asarray(v)))[None] for name, v in observation.items()}
            with torch.inference_mode():
                output = active.module(batch)
            action = np.asarray(output.detach().cpu().numpy()[0], dtype=np.float32)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            raise PolicyError(f"policy failed on the observation: {e}") from e
        self.inference_s.add(time.perf_counter() - started)
        return action


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


def _writable(array: np.ndarray) -> np.ndarray:
    """Returns ``array`` (or a copy when read-only, which ``torch.from_numpy`` warns about)."""
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")
