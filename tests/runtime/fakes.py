"""Small fakes that follow ``hardware.interfaces`` (and a tiny policy) for the runtime tests."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hardware.interfaces import (
    ArraySpec, Camera, CameraStatus, DeviceNotConnectedError, Frame, Robot, RobotState, SimulatedRobot,
    StaleFrameError, Workspace,
)
from runtime.policy_slot import weights_sha256

logger = logging.getLogger(__name__)

ACTION_DIM = 4  # dx, dy, dz, gripper
IMAGE_SHAPE = (3, 8, 8)


class FakeRobot(Robot):
    """A point end effector that integrates ``0.05 * action[:3]`` per command."""

    name = "fake"

    def __init__(self) -> None:
        self._connected = False
        self.position = np.array([0.5, 0.0, 0.3])
        self.actions: list[np.ndarray] = []
        self.stop_calls = 0
        self.home_calls = 0
        self.resets = 0
        self.home_seconds = 0.0
        self._lock = threading.Lock()

    @property
    def action_spec(self) -> ArraySpec:
        return ArraySpec(shape=(ACTION_DIM,), dtype="float32", low=-1.0, high=1.0)

    @property
    def state_spec(self) -> dict[str, ArraySpec]:
        return {"proprio": ArraySpec(shape=(4,), dtype="float32")}

    @property
    def workspace(self) -> Workspace:
        return Workspace(low=(0.3, -0.3, 0.05), high=(0.7, 0.3, 0.5))

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def read_state(self) -> RobotState:
        if not self._connected:
            raise DeviceNotConnectedError("fake robot not connected")
        with self._lock:
            proprio = np.array([*self.position, 0.0], dtype=np.float32)
            return RobotState(timestamp=time.monotonic(), ee_position=self.position.copy(), gripper=0.0,
                              arrays={"proprio": proprio})

    def send_action(self, action: np.ndarray) -> np.ndarray:
        if not self._connected:
            raise DeviceNotConnectedError("fake robot not connected")
        applied = np.clip(action, -1, 1).astype(np.float32)
        with self._lock:
            self.position = self.position + 0.05 * applied[:3]
            self.actions.append(applied)
        return applied

    def home(self) -> None:
        time.sleep(self.home_seconds)
        with self._lock:
            self.position = np.array([0.5, 0.0, 0.3])
            self.home_calls += 1

    def stop(self) -> None:
        self.stop_calls += 1



class FakeSimRobot(FakeRobot, SimulatedRobot):
    """A fake simulated robot: counts environment resets and goal draws (and when they came)."""

    def __init__(self) -> None:
        super().__init__()
        self.draws_at: list[int] = []
        self.resets_at: list[int] = []
        self.lost = False
        """What ``scene_lost`` reports (a test sets it)."""

    def reset_environment(self, options: dict | None = None) -> None:
        self.resets += 1
        self.resets_at.append(len(self.actions))

    def draw_goal(self) -> None:
        self.draws_at.append(len(self.actions))

    @property
    def last_success(self) -> bool:
        return False

    @property
    def scene_lost(self) -> bool:
        return self.lost


class FakeCamera(Camera):
    """Produces a fresh frame at every read (or a stale one when ``frozen``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._status = CameraStatus.CLOSED
        self._index = 0
        self.frozen_at: float | None = None

    @property
    def serial(self) -> str:
        return f"fake-{self.name}"

    @property
    def image_spec(self) -> ArraySpec:
        return ArraySpec(shape=IMAGE_SHAPE, dtype="uint8")

    @property
    def status(self) -> CameraStatus:
        return self._status

    def connect(self) -> None:
        self._status = CameraStatus.STREAMING

    def disconnect(self) -> None:
        self._status = CameraStatus.CLOSED

    def read(self, timeout: float = 1.0) -> Frame:
        return self.read_latest(timeout)

    def read_latest(self, max_age: float) -> Frame:
        if self._status is not CameraStatus.STREAMING:
            raise DeviceNotConnectedError(self.name)
        stamp = time.monotonic() if self.frozen_at is None else self.frozen_at
        if time.monotonic() - stamp > max_age:
            raise StaleFrameError(f"{self.name}: newest frame too old")
        self._index += 1
        image = np.full(IMAGE_SHAPE, self._index % 256, dtype=np.uint8)
        return Frame(image=image, timestamp=stamp, index=self._index)


class TinyPolicy(nn.Module):
    """Maps ``proprio`` (and the mean of ``cam`` when present) to a tanh action."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, ACTION_DIM)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        image = obs["cam"].float().mean(dim=(1, 2, 3))[:, None] / 255.0 if "cam" in obs else \
            torch.zeros(obs["proprio"].shape[0], 1)
        return torch.tanh(self.linear(torch.cat([obs["proprio"].float(), image], dim=-1)))


@dataclass(frozen=True)
class FakeWeights:
    """Duck-typed stand-in for ``protocol.messages.Weights`` (same fields)."""

    agent: str
    version: int
    tensors: dict[str, np.ndarray]
    sha256: str


def make_weights(agent: str, version: int, *, value: float | None = None, seed: int = 0) -> FakeWeights:
    """Returns valid weights for :class:`TinyPolicy` (constant ``value`` or random by ``seed``)."""
    torch.manual_seed(seed)
    tensors = {name: t.detach().numpy().copy() for name, t in TinyPolicy().state_dict().items()}
    if value is not None:
        tensors = {name: np.full_like(a, value) for name, a in tensors.items()}
    return FakeWeights(agent=agent, version=version, tensors=tensors, sha256=weights_sha256(tensors))
