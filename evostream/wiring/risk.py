"""A risk probe learned from the log and governed like a model.

``train_probe`` replays labelled outcomes and the steps of their traces from Kafka, fits ``RiskProbe`` on the older
three quarters of the labelled traces (by when each began) and measures it on the newest quarter against mean token
entropy, the simplest baseline. ``register_probe`` stores its bytes in the artifact store and registers them in the
governance log as a version of the model ``risk/<family>`` with its lineage (the log range, the labels' digest) and
its measurements, then records the validation: the probe passes when its held-out AUROC is at least entropy's plus
``min_gain``. Approval and promotion are the usual governance commands. ``GovernedProbes`` follows the log and offers
each family's production probe to the processors' risk tracker, which swaps between batches."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import replay
from evostream.consumers.governance.service import Governance
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import EvoError
from evostream.core.settings import Settings
from evostream.models.risk_probe import RiskProbe, fit_probe, sketch_dim_of, trace_features
from evostream.schemas.catalog import OUTCOMES, STEPS
from evostream.stream_processors.risk.metrics import auroc
from evostream.stream_processors.risk.outcomes import OutcomeBook
from evostream.stream_processors.risk.policy import family_of
from evostream.stream_processors.risk.tracker import ServedProbe
from evostream.views.outcomes import read_outcomes
from evostream.views.traces import read_traces

log = logging.getLogger("evostream.risk")

PREFIX = "risk/"
ARTIFACT_FILE = "probe.json"
HELD_OUT = 0.25
"""The newest share of the labelled traces the probe is measured on, never fitted on."""
MIN_LABELS = 10
"""Fewest wrong and fewest right answers each part (fit, held out) must hold."""
L2_CHOICES = (0.1, 1.0, 10.0, 100.0)
"""The L2 penalties ``train_probe`` chooses from when none is given."""


def probe_model(family: str) -> str:
    """The registry model name of ``family``'s probe."""
    return PREFIX + family


@dataclass(frozen=True)
class Trained:
    """A fitted probe and what its held-out measurement said."""

    probe: RiskProbe
    metrics: dict[str, Any]
    passed: bool
    gates: dict[str, Any]


def _labelled(server: str, since_us: int | None, until_us: int | None) -> OutcomeBook:
    """The outcomes recorded in [since, until), folded."""
    at = since_us if since_us is not None else -(2**63)
    end = until_us if until_us is not None else 2**63
    return read_outcomes(server, lambda rec: at <= int(rec["recorded_at_us"]) < end)


def train_probe(
    server: str,
    family: str,
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    l2: float | None = None,
    min_gain: float = 0.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Trained:
    """Fit and measure ``family``'s probe from the log (EvoError when the log holds too few labels)."""
    book = _labelled(server, since_us, until_us)
    ids = book.ids()
    progress(f"{len(ids)} labels of {len(book)} traces recorded in the range ({book.retries} retries counted once)")
    labelled = set(book.traces())
    steps = read_traces(server, lambda s: s["trace_id"] in labelled and family_of(s["model_version"]) == family)
    rows = sorted(steps, key=lambda t: (int(steps[t][0]["emitted_at_us"]), t))
    if not rows:
        raise EvoError(f"no labelled trace of {family} has its steps on {STEPS}")
    layers, sketch = int(steps[rows[0]][0]["num_layers"]), sketch_dim_of(steps[rows[-1]][0])
    rows = [t for t in rows if int(steps[t][0]["num_layers"]) == layers]
    x = np.vstack([trace_features(steps[t], layers, sketch) for t in rows])
    wrong = np.array([(book.score(t) or 0.0) < 0.5 for t in rows])
    entropy = np.array([float(np.mean([s["entropy_bits"] for s in steps[t]])) for t in rows])
    cut = round(len(rows) * (1 - HELD_OUT))
    fit, held = slice(0, cut), slice(cut, None)
    for name, part in (("fit", wrong[fit]), ("held-out", wrong[held])):
        if min(part.sum(), (~part).sum()) < MIN_LABELS:
            raise EvoError(
                f"the {name} part holds {part.sum()} wrong and {(~part).sum()} right answers of {family}: "
                f"label at least {MIN_LABELS} of each in each part ({len(rows)} labelled traces with steps)"
            )
    lineage = {
        "topics": [OUTCOMES, STEPS],
        "since_us": since_us,
        "until_us": until_us,
        "labels": len(ids),
        "labels_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "traces": len(rows),
        "fitted_on": cut,
        "held_out": len(rows) - cut,
    }
    if l2 is None:  # chosen on the newest quarter of the fit part, never on the held-out part
        inner = round(cut * (1 - HELD_OUT))
        y_in, y_out = wrong[:inner], wrong[inner:cut]
        l2 = max(
            L2_CHOICES,
            key=lambda c: (
                auroc(
                    fit_probe(x[:inner], y_in, family, layers, l2=c, sketch_dim=sketch).probability(x[inner:cut]), y_out
                )
                if min(y_in.sum(), (~y_in).sum(), y_out.sum(), (~y_out).sum()) > 0
                else -c
            ),
        )
        progress(f"L2 penalty {l2:g}, chosen on the newest quarter of the fit part")
    probe = fit_probe(x[fit], wrong[fit], family, layers, l2=l2, trained_on={**lineage, "l2": l2}, sketch_dim=sketch)
    p_held = probe.probability(x[held])
    ours, base = auroc(p_held, wrong[held]), auroc(entropy[held], wrong[held])
    passed = bool(np.isfinite(ours) and ours >= base + min_gain)
    gates = {"held_out_auroc": {"value": ours, "threshold": base + min_gain, "passed": passed}}
    metrics = {
        "held_out_auroc": ours,
        "held_out_auroc_mean_entropy": base,
        "held_out_traces": len(rows) - cut,
        "held_out_wrong": int(wrong[held].sum()),
        "fitted_traces": cut,
    }
    progress(
        f"probe fitted on {cut} traces; held out {len(rows) - cut}: AUROC {ours:.3f} against mean entropy's {base:.3f}"
    )
    return Trained(probe, metrics, passed, gates)


def register_probe(gov: Governance, store: ArtifactStore, trained: Trained, reason: str = "") -> str:
    """Store the probe, register it as a candidate of ``risk/<family>`` and record its validation; its version."""
    model = probe_model(trained.probe.family)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ARTIFACT_FILE).write_bytes(trained.probe.to_bytes())
        ref = store.put_dir(Path(tmp))
    version = f"{model}@{ref.sha256[:12]}"
    known = gov.state().registry.models.get(model)
    if known is not None and version in known["versions"]:
        return version  # the same bytes again (a rebuild from the same log range): registered once
    gov.register(
        model,
        version,
        artifact_uri=ref.uri,
        artifact_sha256=ref.sha256,
        operator="risk-train",
        operator_params=dict(trained.probe.trained_on),
        metrics=trained.metrics,
        reason=reason or "risk probe trained from the log",
    )
    gov.validated(model, version, trained.passed, trained.gates, reason="held-out labelled range")
    return version


def load_probe(store: ArtifactStore, sha256: str) -> RiskProbe:
    """A stored probe, its bytes re-hashed first (ArtifactError if any differ)."""
    return RiskProbe.from_bytes((store.open(sha256) / ARTIFACT_FILE).read_bytes())


class GovernedProbes:
    """Offers ``offer(family, ServedProbe | None)`` the production probe of every ``risk/<family>`` model, from a
    verified replay of the governance log and then as promotions and rollbacks come (polled every ``poll_s``)."""

    def __init__(
        self, server: str, settings: Settings, offer: Callable[[str, ServedProbe | None], None], poll_s: float = 1.0
    ) -> None:
        self.offer = offer
        self.poll_s = poll_s
        self.store = ArtifactStore(settings.artifacts_dir)
        self._log = GovernanceLog(server, topic=settings.governance_topic)
        self.serving: dict[str, str] = {}
        self.registry, findings = replay(self._log.items())
        if findings:  # the hand-set policies keep judging: a refused log must not stop the risk scores
            log.error("risk: the governance log failed verification (%s): no learned probe is served", findings[0])
        else:
            self._sync()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="risk-probe-follower", daemon=True)
        self._thread.start()

    def _sync(self) -> None:
        for model, state in self.registry.models.items():
            if not model.startswith(PREFIX):
                continue
            family, version = model[len(PREFIX) :], state["production"]
            if version == self.serving.get(family):
                continue
            if version is None:
                self.offer(family, None)
                self.serving.pop(family, None)
                continue
            probe = load_probe(self.store, state["versions"][version]["artifact_sha256"])
            self.offer(family, ServedProbe(version, probe))
            self.serving[family] = version
            log.info("risk: %s's production probe is %s", family, version)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                tail = self._log.read(from_offset=self.registry.offset + 1)
                if tail:
                    registry, findings = replay(tail, start=self.registry)
                    if findings:
                        raise EvoError(f"the governance log failed verification: {findings[0]}")
                    self.registry = registry
                self._sync()
            except Exception as e:  # the probe serving keeps serving; retried every poll
                log.error("risk probe follower: %s (retrying)", e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._log.close()
