"""protocol.messages.Agent: one definition of the two agents, as ints (batches, per-agent
lists) and as labels (Weights, Command)."""

from __future__ import annotations

import json

import numpy as np

from protocol.messages import AGENTS, BACKWARD, FORWARD, Agent, Command


def test_ints_and_labels_agree() -> None:
    assert (int(FORWARD), int(BACKWARD)) == (0, 1) and AGENTS == ("forward", "backward")
    assert [AGENTS[a] for a in Agent] == [a.label for a in Agent]
    assert np.array([FORWARD, BACKWARD], dtype=np.uint8).tolist() == [0, 1]
    assert json.dumps({"agent": BACKWARD}) == '{"agent": 1}' and f"{BACKWARD}" == "1"


def test_commands_take_the_labels() -> None:
    assert Command(request_id=1, kind="switch_agent", agent=BACKWARD.label).agent == "backward"
