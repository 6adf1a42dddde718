"""A rollout on the real broker: a governance log where a candidate is approved (and maybe being rolled out), and
the traffic of the two versions written to evo.completions / evo.alerts / evo.outcomes / evo.shadow as the service
and the processors would write it, at a steady pace in a thread or record by record."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, init, key_path
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.core.settings import Settings, load_settings
from evostream.rollout.plan import RolloutPlan
from evostream.schemas.catalog import ALERTS, COMPLETIONS, OUTCOMES, SHADOW
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Completion, Outcome, RiskAlert, ShadowComparison
from evostream.views.governance import GovernanceView, anchor_file, checkpoints_path
from tests.rollout.traffic import alert, comparison, completion, outcome


@dataclass
class Governed:
    settings: Settings
    admin: Governance
    model: str
    v1: str
    v2: str


def governed(kafka: str, tmp_path: Path, plan: RolloutPlan | None) -> Governed:
    """A governance log where the model's v1 is production and v2 is approved for production, and is being rolled
    out under ``plan`` (None: not yet)."""
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        governance_topic=f"test-rollout-control-{run}",
        artifacts_dir=tmp_path / "a",
    )
    keys = settings.governance_dir / "keys"
    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    admin, _ = init(glog, keys, "admin", checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))
    view = GovernanceView(kafka, settings)
    bob_key = ActorKey.generate()
    bob_key.save(key_path(keys, "bob"))
    admin.enroll("bob", bob_key.public_hex, bob_key.key_id, ["approver"], reason="reviewer")
    bob = view.actor("bob")
    model = f"m-{run}"
    v1, v2 = f"{model}@1", f"{model}@2"
    for v in (v1, v2):
        admin.register(model, v, artifact_uri=f"file:///{v}", artifact_sha256="ab" * 32, reason="built")
        admin.validated(model, v, True, {"acc": 0.9}, reason="suite")
        bob.approve(model, v, reason="fine")
    admin.promote(model, v1, stage="production", reason="first")
    if plan is not None:
        admin.start_rollout(model, v2, plan.to_json(), {"compare": "clean"}, reason="try v2", rollout_id=f"ro-{run}")
    return Governed(settings, admin, model, v1, v2)


class Traffic:
    """Requests answered at ``per_s`` a second: the candidate answers ``weight`` percent of them (by request number),
    the incumbent the rest, and in the shadow phase a tenth are mirrored to the candidate (SHADOW answers). Every
    20th answer of a version is alerted, every 3rd labelled (4 of 5 of those right); ``broken``: every candidate
    answer is alerted."""

    def __init__(self, server: str, incumbent: str, candidate: str, per_s: float = 40.0, broken: bool = False):
        self.producer = EventProducer(server)
        self.codecs = {
            COMPLETIONS: RecordCodec.of(Completion),
            ALERTS: RecordCodec.of(RiskAlert),
            OUTCOMES: RecordCodec.of(Outcome),
            SHADOW: RecordCodec.of(ShadowComparison),
        }
        self.versions = (incumbent, candidate)
        self.per_s = per_s
        self.broken = broken
        self.weight = 0
        self.shadow = True
        self.sent = {incumbent: 0, candidate: 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rollout-traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.producer.flush(30)

    def _run(self) -> None:
        i = 0
        while not self.stop.wait(1.0 / self.per_s):
            i += 1
            to_candidate = i * self.weight // 100 > (i - 1) * self.weight // 100  # weight in every 100, spread
            trace = self.answer(self.versions[to_candidate], "ANSWER")
            if not to_candidate and self.shadow and i % 10 == 0:
                mirrored = self.answer(self.versions[1], "SHADOW")
                pair = comparison(trace, mirrored, *self.versions, now_us(), agree=i % 30 != 0)
                self.send(SHADOW, f"req-{trace}", pair)
            self.producer.poll()

    def answer(self, version: str, role: str, at: int | None = None) -> str:
        """One answer of ``version`` (now, or at ``at``), its alert and its label as the rates say; its trace."""
        n = self.sent[version] = self.sent[version] + 1
        trace, at = f"{version}-{n}-{uuid.uuid4().hex[:6]}", now_us() if at is None else at
        candidate = version == self.versions[1]
        self.send(COMPLETIONS, trace, completion(trace, version, at, role=role, latency_ms=80.0 + n % 7))
        if n % 20 == 0 or (candidate and self.broken):
            self.send(ALERTS, trace, alert(trace, version, at + 500))
        if n % 3 == 0:
            self.send(OUTCOMES, trace, outcome(trace, version, n % 5 != 0, at + 800))
        return trace

    def send(self, topic: str, key: str, rec: Any) -> None:
        self.producer.send(topic, key, self.codecs[topic].encode(rec))
