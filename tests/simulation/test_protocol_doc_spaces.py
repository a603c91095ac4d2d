"""docs/protocol.md's table of the spaces each task expects matches what the simulated robots
declare in their hello (issue 17, hole 6)."""

from __future__ import annotations

import pytest

from protocol.spaces import ArraySpec
from runtime.daemon_config import observation_spaces
from simulation.sim_robot import SimRobot
from tests.protocol.test_protocol_doc import spaces_table


@pytest.mark.parametrize("task", ["door", "tabletop", "peg", "cube"])
def test_the_spaces_table_matches_the_simulated_robots(task: str) -> None:
    table = spaces_table()
    for mode in ("state", "pixels"):
        robot = SimRobot(task, obs=mode)  # construction only: no MuJoCo model is built
        assert observation_spaces(robot, list(robot.cameras.values())) == table[(task, mode)], (task, mode)
        spec = robot.action_spec
        assert ArraySpec(dtype=spec.dtype, shape=tuple(spec.shape)) == table[(task, "action")]
