"""The runtime's status: what ``resetfree-runtime ctl status`` and the learner's status
requests receive (:func:`status_detail`), and the periodic log line (:func:`status_line`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.messages import AGENTS
from protocol.transport import ControlServer
from protocol.transport.common import handshake_figures
from runtime.learner_link import LearnerLink
from runtime.loop import ControlLoop
from runtime.outbox import Outbox
from runtime.policy_slot import PolicySlot
from runtime.quarantine import Quarantine


def status_detail(loop: ControlLoop, outbox: Outbox, policy: PolicySlot, link: LearnerLink,
                  control: ControlServer | None, quarantine: Quarantine) -> dict[str, Any]:
    """Returns the status fields of a running runtime (docs/protocol.md, "status"): the loop's
    figures, the outbox's seqs, the policy's versions, the link's connection, and every
    rejection counted (control, uplink, weights, quarantine)."""
    stats = loop.stats()
    agent = loop.schedule.agent
    version = policy.version(agent)
    detail: dict[str, Any] = stats.detail()
    # Every rejection is counted (issue 17): the subscribers' (malformed, checksum) and the slot's.
    weights = link.weights_figures()
    control_malformed = control.malformed_count if control is not None else 0
    detail.update({f"weights_{k}": v for k, v in weights.items()}, **quarantine.figures(),
                  **handshake_figures(),
                  weights_policy_rejected=policy.rejected,
                  control_accepted=control.accepted_count if control is not None else 0,
                  control_malformed=control_malformed,
                  failed_replies=control.failed_replies if control is not None else 0)
    detail.update(
        agent=AGENTS[agent], seed_phase=not policy.has_policy(agent),
        acked_seq=outbox.acked_seq, next_seq=outbox.next_seq, oldest_seq=outbox.oldest_seq,
        unwritten_steps=outbox.unwritten_steps, lost_steps=outbox.lost_steps,
        weights_version=-1 if version is None else version, env_resets=loop.sim_events.env_resets,
        interventions=loop.sim_events.interventions,
        session_id=outbox.session_id,
        weights_rejected=policy.rejected + weights["malformed"] + weights["checksum_failures"],
        weights_accepted=policy.accepted,
        malformed_rejected=control_malformed + weights["malformed"] + quarantine.malformed
        + link.client.malformed_count,
        **link.status_detail(),
    )
    for name in AGENTS:
        v = policy.version(AGENTS.index(name))
        detail[f"weights_version_{name}"] = -1 if v is None else v
        detail[f"weights_active_at_{name}"] = link.weights_active_at.get(name, 0.0)
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in detail.items()}


LOGGED = ("steps", "agent", "seed_phase", "acked_seq", "queue_depth", "spilled_bytes", "overruns",
          "jitter_p99_ms", "inference_p50_ms", "weights_version", "weights_connection", "env_resets", "connected")
"""The status fields the daemon logs every ``status_log_interval_s``."""


def _for_people(value: Any) -> Any:
    """A status value as a log line shows it: floats to 3 significant digits (``status`` and
    the JSON keep full precision)."""
    return f"{value:.3g}" if isinstance(value, float) else value


def status_line(detail: dict[str, Any]) -> str:
    """The daemon's periodic INFO line: the :data:`LOGGED` fields of ``detail``."""
    return " ".join(f"{k}={_for_people(v)}" for k, v in detail.items() if k in LOGGED)
