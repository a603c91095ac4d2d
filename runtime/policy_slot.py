"""One policy per agent, hot-swapped atomically between ticks.

:meth:`PolicySlot.offer` verifies a weights blob off the event loop (a one-thread executor
owned by the slot): agent known, tensor names/shapes/dtypes equal to the module's
``state_dict``, all finite, checksum correct, version strictly newer. It then loads the
tensors into a *spare* module (a pool of three: an active module is never written), runs
it once on an example observation, and, back on the event loop, swaps one reference. ``act``
runs on the event loop, so a swap can never happen in the middle of an inference and never
costs a tick. A bad blob is logged, counted and rejected; the current policy stays.

Inference speed (``PolicySlotConfig``): the conv trunk in bfloat16 where the CPU has native
bf16 (the image projection optionally in float16), each module run through a TorchScript
trace of itself that shares its parameters, and :meth:`prefetch` for the loop's cache
warm-up before each tick. Float32 tensors may arrive as float16
(``protocol.tensors.weights_in_dtype``).

The weights object is ``protocol.messages.Weights`` or anything with ``agent`` (``"forward"``/
``"backward"`` or 0/1), ``version: int``, ``tensors: dict[str, np.ndarray]`` and ``sha256: str``.
The checksum is ``protocol.tensors.weights_sha256`` (re-exported here). The checks of a blob
and the copy into a module are :mod:`runtime.policy_weights`; this module owns the modules
(building, tracing, the spare pool), the swap and inference.
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

from learner.networks import native_bf16
from protocol.messages import AGENTS
from protocol.tensors import weights_sha256
from protocol.spaces import ObsSpec
from runtime.errors import PolicyError, WeightsRejected
from runtime.isolation import lower_thread_priority
from runtime.policy_weights import layout_of, load_tensors, verify_weights
from runtime.schedule import agent_index
from runtime.stats import Ring

logger = logging.getLogger(__name__)

__all__ = ["CONV_DTYPES", "PROJECTION_DTYPES", "OfferResult", "PolicySlot", "PolicySlotConfig",
           "resolve_conv_dtype", "resolve_projection_dtype", "weights_sha256"]

CONV_DTYPES = ("auto", "float32", "bfloat16")
PROJECTION_DTYPES = ("float32", "float16")


def resolve_conv_dtype(name: str) -> torch.dtype:
    """Returns the torch dtype for ``PolicySlotConfig.conv_dtype`` (``auto`` resolved here)."""
    if name == "auto":
        name = "bfloat16" if native_bf16("cpu") else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def resolve_projection_dtype(name: str) -> torch.dtype:
    """Returns the torch dtype for ``PolicySlotConfig.projection_dtype``."""
    return {"float32": torch.float32, "float16": torch.float16}[name]


@dataclass(frozen=True, kw_only=True)
class PolicySlotConfig:
    """Limits and statistics of the policy slot."""

    max_blob_bytes: int = 256 * 2**20
    """Largest accepted weights blob (sum of tensor bytes)."""
    stats_window: int = 2000
    """Inference-time samples kept for percentiles."""
    conv_dtype: str = "auto"
    """Dtype the actor's conv trunk runs in: ``bfloat16`` holds a bf16 copy of it, computing as
    the learner does under autocast (``agent.encoder_bf16``);
    ``float32`` runs the published tensors as they are; ``auto`` picks bfloat16 where the CPU
    has native bf16 (AMX / AVX512-BF16), else float32. State-mode policies are unaffected."""
    projection_dtype: str = "float32"
    """Dtype of the image projection's linear layer (the largest tensor, ~16 MB in float32,
    read once per inference). ``float16`` halves that read (the precision weights are
    published in by default; a blob holding a value beyond float16's range is then
    rejected) and ran faster back to back on AVX512-FP16 here (0.44 vs 0.58 ms), but slower
    with a learner training on the same two cores (50 Hz inference p50 2.35 and 2.42 ms
    against 2.01 and 2.19 in alternating runs), so float32 is the default."""

    explore: bool = True
    """Sample practice actions from the policy's tanh-Gaussian, ``tanh(mu + std · ε)``, as the
    learner's in-process agent does (SAC / REDQ collect data with the stochastic policy);
    False acts with the mean ``tanh(mu)`` (showing a learned policy, not practising). Applies
    to slots built by :meth:`PolicySlot.for_actor`; a generic module's output is the action."""
    seed: int | None = None
    """Seed of the exploration noise (None: from the OS)."""

    trace: bool = True
    """Run the policy as a TorchScript trace of itself (same parameters, loaded in place):
    ~10% less per-call overhead at batch 1 (1.70 -> 1.53 ms for the two-camera actor here).
    Needs an example observation (``for_actor`` has one); falls back to eager if tracing fails."""

    def __post_init__(self) -> None:
        if self.conv_dtype not in CONV_DTYPES:
            raise ValueError(f"conv_dtype: must be one of {CONV_DTYPES}, got {self.conv_dtype!r}")
        if self.projection_dtype not in PROJECTION_DTYPES:
            raise ValueError(f"projection_dtype: must be one of {PROJECTION_DTYPES}, got {self.projection_dtype!r}")
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
class _Policy:
    module: nn.Module
    """The module whose parameters the weights are loaded into (in place)."""
    run: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    """What inference calls: the module, or its TorchScript trace sharing its parameters."""


@dataclass(frozen=True)
class _Active:
    policy: _Policy
    version: int
    weights: tuple[torch.Tensor, ...]
    """The module's parameters and buffers (what :meth:`PolicySlot.prefetch` reads)."""


class PolicySlot:
    """Holds the active policy module of each agent; see the module docstring."""

    def __init__(self, build: Callable[[], nn.Module], config: PolicySlotConfig | None = None, *,
                 example: Mapping[str, np.ndarray] | None = None, gaussian: bool = False) -> None:
        """``build()`` returns a fresh policy module (e.g. ``build_actor(...)``); it is called
        once now for the expected ``state_dict`` layout and later in the worker thread.
        ``example`` (an observation) is run through every freshly loaded module in the worker
        thread, so the first inference on the loop does not pay for kernel set-up.
        ``gaussian``: the module returns ``[mu, log_std]`` ``(B, 2A)`` of a tanh-Gaussian
        (``PolicyNetwork.gaussian_output``), and :meth:`act` samples from it or takes its
        mean (``config.explore``); otherwise its output is the action."""
        self.config = config or PolicySlotConfig()
        self._build = build
        self._gaussian = gaussian
        self._rng = np.random.default_rng(self.config.seed)
        self._example = None if example is None else _batch(example)
        template = build()
        self._layout = layout_of(template)
        self._active: dict[int, _Active] = {}
        # Spare modules, shared by both agents (one architecture). With an example, all three
        # a steady state needs (two active, one loading) are built and traced now, so no swap
        # pays for building one.
        self._spares: list[_Policy] = [self._compiled(template)]
        if self._example is not None:
            self._spares += [self._compiled(build()) for _ in range(2)]
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-verify",
                                            initializer=lower_thread_priority)
        self.inference_s = Ring(self.config.stats_window)
        self.prefetch_s = Ring(self.config.stats_window)
        self.swap_ms = Ring(100)
        self.accepted = 0
        self.rejected = 0
        self.last_reject_reason = ""

    @classmethod
    def for_actor(cls, obs_spec: ObsSpec, action_dim: int,
                  net_config: Mapping[str, Any], config: PolicySlotConfig | None = None) -> PolicySlot:
        """Returns a slot for ``learner.networks.build_actor(obs_spec, action_dim, net_config)``.

        Raises ValueError when the learner's network config is invalid.
        """
        from learner.networks import build_actor, cast_for_inference

        config = config or PolicySlotConfig()
        conv = resolve_conv_dtype(config.conv_dtype)
        projection = resolve_projection_dtype(config.projection_dtype)
        example = {name: np.zeros(shape, dtype) for name, (shape, dtype) in obs_spec.items()}

        def build() -> nn.Module:
            policy = cast_for_inference(build_actor(obs_spec, action_dim, net_config).eval(), conv, projection)
            policy.gaussian_output = True
            return policy

        slot = cls(build, config, example=example, gaussian=True)
        logger.info("policy: conv trunk in %s, image projection in %s", str(conv).removeprefix("torch."),
                    str(projection).removeprefix("torch."))
        return slot

    # ------------------------------------------------------------------ queries
    @property
    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The tensors a weights blob must carry: name → (shape, dtype as published)."""
        return {name: (shape, str(dtype)) for name, (shape, dtype) in self._layout.items()}

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
                                 "inference_p50_ms": self.inference_s.percentile(50) * 1e3,
                                 "prefetch_p50_ms": self.prefetch_s.percentile(50) * 1e3}
        for agent, active in self._active.items():
            out[f"version_{AGENTS[agent]}"] = active.version
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

    def _prepare(self, weights: Any) -> tuple[int, int, _Policy]:
        """Verifies and loads into a spare module (worker thread). Raises WeightsRejected."""
        agent, version, tensors = verify_weights(weights, self._layout, current=self.version,
                                                 max_blob_bytes=self.config.max_blob_bytes)
        with self._lock:
            policy = self._spares.pop() if self._spares else None
        if policy is None:
            policy = self._compiled(self._build())
        module = policy.module
        try:
            load_tensors(module, tensors)
        except WeightsRejected:
            self._recycle(policy)  # a spare: half-loaded is harmless, the next blob overwrites it
            raise
        module.eval()
        if self._example is not None:
            try:
                with torch.inference_mode():
                    policy.run(self._example)  # kernel set-up and caches, off the loop
            except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
                self._recycle(policy)
                raise WeightsRejected(f"the policy fails on an example observation: {e}") from e
        return agent, version, policy

    def _compiled(self, module: nn.Module) -> _Policy:
        """Pairs ``module`` with what inference calls (its trace when configured and possible)."""
        if not (self.config.trace and self._example is not None):
            return _Policy(module=module, run=module)
        try:
            # Deprecated from torch 2.13 (a DeprecationWarning) yet still the cheapest call here
            # (``trace``); a torch without it fails below and the policy runs eagerly.
            with torch.no_grad():
                traced = torch.jit.trace(module, (self._example,), strict=False, check_trace=False)
            with torch.inference_mode():
                for _ in range(3):  # TorchScript profiles the first calls, then optimises
                    traced(self._example)
        except (RuntimeError, TypeError, ValueError, AttributeError) as e:
            logger.warning("policy: tracing failed, running the module eagerly: %s", e)
            return _Policy(module=module, run=module)
        return _Policy(module=module, run=traced)

    def _install(self, agent: int, version: int, policy: _Policy) -> None:
        current = self.version(agent)
        if current is not None and version <= current:  # a newer blob won the race
            self._recycle(policy)
            raise WeightsRejected(f"version {version} is not newer than active {current}")
        previous = self._active.get(agent)
        weights = (*policy.module.parameters(), *policy.module.buffers())
        self._active[agent] = _Active(policy=policy, version=version, weights=weights)  # the atomic swap
        if previous is not None:
            self._recycle(previous.policy)

    def _recycle(self, policy: _Policy) -> None:
        with self._lock:  # any spare serves either agent
            if len(self._spares) < 3:
                self._spares.append(policy)

    def _accept(self, agent: int, version: int, started: float) -> OfferResult:
        elapsed = (time.perf_counter() - started) * 1e3
        self.accepted += 1
        self.swap_ms.add(elapsed)
        logger.info("policy: %s weights v%d active (%.1f ms after offer)", AGENTS[agent], version, elapsed)
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
    def prefetch(self, agent: int, observation: Mapping[str, np.ndarray] | None = None) -> None:
        """Warms the caches for ``agent``'s next :meth:`act`; a no-op before its first weights.

        With ``observation`` (the loop passes the previous tick's) it runs the policy once and
        discards the action, which warms weights, code and buffers alike; without, it reads
        the weights only. The loop calls it a few ms before each tick: between ticks the core
        idles or serves the learner, and the first inference after that ran 3.5–8.7 ms where
        a warm one takes ~2.5 ms (pixel actor, 10 Hz, this 2-core machine). Blocks for one
        inference (or one read of the weights); errors are left to the real :meth:`act`.
        """
        active = self._active.get(agent)
        if active is None:
            return
        started = time.perf_counter()
        with torch.inference_mode():
            if observation is None:
                for tensor in active.weights:
                    tensor.sum()  # a read of every byte; the result is discarded
            else:
                try:
                    active.policy.run(_batch(observation))
                except (RuntimeError, ValueError, TypeError, KeyError, IndexError):
                    pass  # act() on the next tick reports the same failure properly
        self.prefetch_s.add(time.perf_counter() - started)

    def act(self, agent: int, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """Returns the action ``(A,)`` float32 of ``agent``'s policy: sampled from its
        tanh-Gaussian in practice, its mean with ``config.explore`` off (see ``gaussian``).

        Runs on the calling thread (the event loop; ~1–2 ms for the pixel actor on CPU).
        Raises PolicyError when no weights are loaded or the module fails on the input.
        """
        active = self._active.get(agent)
        if active is None:
            raise PolicyError(f"no weights loaded for the {AGENTS[agent]} agent")
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = active.policy.run(_batch(observation))
            action = np.asarray(output.detach().cpu().numpy()[0], dtype=np.float32)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            raise PolicyError(f"policy failed on the observation: {e}") from e
        if self._gaussian:
            action = self._gaussian_action(action)
        self.inference_s.add(time.perf_counter() - started)
        return action

    def _gaussian_action(self, mean_log_std: np.ndarray) -> np.ndarray:
        """``tanh(mu + std · ε)`` (explore) or ``tanh(mu)`` from ``[mu, log_std]`` ``(2A,)``."""
        mu, log_std = np.split(mean_log_std, 2)
        if self.config.explore:
            mu = mu + np.exp(log_std) * self._rng.standard_normal(mu.shape)
        return np.tanh(mu).astype(np.float32)


def _batch(observation: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """One observation as a batch of one (tensors sharing the arrays' memory where possible)."""
    return {name: torch.from_numpy(_writable(np.asarray(v)))[None] for name, v in observation.items()}


def _writable(array: np.ndarray) -> np.ndarray:
    """Returns ``array`` (or a copy when read-only, which ``torch.from_numpy`` warns about)."""
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")
