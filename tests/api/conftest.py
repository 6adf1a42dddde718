"""A governed deployment the HTTP API fronts, on the real broker: the embedded model's weights as version 1 and a
perturbed copy as version 2 (production), both in the artifact store and on the governance log; the inference
service following the log; the stream processors (``evostream process``) for risk; ``evostream api``'s app served by
uvicorn on a free port. Shared by the API, schema and browser tests; ``unprocessed`` is a second API on the same
broker as it is when the stream processors are not running."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI

from evostream.api.app import create_app
from evostream.api.config import ApiConfig
from evostream.api.server import ServeLimits, server_config
from evostream.consumers.governance.api_keys import token_for
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, init, key_path
from evostream.core.artifacts import ArtifactStore
from evostream.core.settings import Settings, load_settings
from evostream.models.loading import load_model
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.service import InferenceService, ServeOptions
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.governed import GovernedModel
from evostream.wiring.templates import GovernedTemplates
from tests.stream_processors.harness import Worker

GATES = {"accuracy:mean": {"value": 1.0, "threshold": 0.9, "passed": True}}
TASK_ACCURACY = {"copy": 0.98, "reverse": 0.95, "sort": 0.9}
"""Registered as both versions' nested metrics, as the embedded model's genesis registers its own."""
HOSTS = ["127.0.0.1", "localhost"]


@dataclass
class Deployment:
    url: str
    settings: Settings
    model: str
    v1: str
    v2: str
    admin_token: str
    alice_token: str
    """An approver's token (not an admin)."""
    parameters: int
    service: InferenceService
    source: GovernedModel

    def wait_serving(self, version: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.source.current().version != version:
            assert time.monotonic() < deadline, f"the service never swapped to {version}"
            time.sleep(0.1)

    def restore(self) -> None:
        """Version 2 in production and serving again, whatever a test did (the tests after it expect it)."""
        r = httpx.get(self.url + "/registry", timeout=30).json()
        if r["models"][self.model]["production"] != self.v2:
            back = httpx.post(
                self.url + "/governance/rollback",
                json={"model": self.model, "to": self.v2, "reason": "restore"},
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=60,
            )
            assert back.status_code == 200, back.text
        self.wait_serving(self.v2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(cfg: ApiConfig | FastAPI, limits: ServeLimits | None = None) -> Iterator[str]:
    """``evostream api``'s app over ``cfg`` (or that app), served as ``evostream api`` serves it (its limits, its
    protocol) on a free loopback port: its URL while the block runs."""
    port = free_port()
    app = cfg if isinstance(cfg, FastAPI) else create_app(cfg)
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def saved_versions(tmp: Path) -> tuple[Path, Path, int]:
    """The embedded model as saved, and a copy with its output head perturbed (other weights, another hash); their
    parameter count."""
    lm = load_model("default", device="cpu")
    one, two = tmp / "v1", tmp / "v2"
    lm.model.save_pretrained(one)
    lm.tokenizer.save_pretrained(one)
    torch.manual_seed(2)
    with torch.no_grad():
        head = lm.model.get_output_embeddings().weight
        head.add_(0.02 * torch.randn_like(head))
    lm.model.save_pretrained(two)
    lm.tokenizer.save_pretrained(two)
    return one, two, lm.parameter_count()


# package scope: its service is a member of the serving consumer group, and must leave it before the other tests'
# services join (they would share the requests)
@pytest.fixture(scope="package")
def deployment(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("api")
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp / "gov",
        artifacts_dir=tmp / "art",
        governance_topic=f"test-api-governance-{run}",
    )
    store = ArtifactStore(settings.artifacts_dir)
    p1, p2, parameters = saved_versions(tmp)
    r1, r2 = store.put_dir(p1), store.put_dir(p2)
    model, v1, v2 = f"suite-{run}", f"suite-{run}@1", f"suite-{run}@2"
    keys = settings.governance_dir / "keys"
    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    admin, _ = init(glog, keys, "admin", checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))
    alice_key = ActorKey.generate()
    alice_key.save(key_path(keys, "alice"))
    admin.enroll("alice", alice_key.public_hex, alice_key.key_id, ["approver"], reason="test approver")
    alice = Governance(glog, alice_key, "alice")
    for version, ref, parent in ((v1, r1, None), (v2, r2, v1)):
        admin.register(
            model,
            version,
            artifact_uri=ref.uri,
            artifact_sha256=ref.sha256,
            parent=parent,
            operator=None if parent is None else "perturb",
            metrics={"parameters": parameters, "task_accuracy": TASK_ACCURACY},
        )
        admin.validated(model, version, True, GATES)
        alice.approve(model, version, reason="looks fine")
        admin.promote(model, version, stage="production", reason="first" if parent is None else "better")

    (tmp / "processors").mkdir()
    worker = Worker(kafka, tmp / "processors")
    worker.start()
    settings = settings.model_copy(update={"processors_app_id": worker.env["EVOSTREAM_PROCESSORS_APP_ID"]})
    source = GovernedModel(
        kafka, settings, model, poll_s=0.2, load=lambda path, _v: load_model(str(path), device="cpu")
    )
    templates = GovernedTemplates(kafka, settings, poll_s=0.2)
    options = ServeOptions(max_batch=8, max_wait_ms=10)
    loaded = source.current().loaded
    service = InferenceService(kafka, loaded, PromptEmbedder(), options, models=source, templates=templates)
    serving = threading.Thread(target=service.run, daemon=True)
    serving.start()
    try:
        # the dashboard and these tests read without a key, as `evostream api --trust-loopback` lets them
        with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS, trust_loopback=True)) as url:
            yield Deployment(
                url,
                settings,
                model,
                v1,
                v2,
                token_for(ActorKey.load(key_path(keys, "admin")), "admin", admin.state().registry.genesis_hash),
                token_for(alice_key, "alice", admin.state().registry.genesis_hash),
                parameters,
                service,
                source,
            )
    finally:
        service.stop_event.set()
        serving.join(60)
        source.close()
        templates.close()
        worker.stop()
        glog.close()


@pytest.fixture(scope="package")
def unprocessed(kafka: str, deployment: Deployment) -> Iterator[str]:
    """The URL of a second API on the deployment's broker whose settings name a processors group no process is in:
    the API as it is when ``evostream process`` is not running (the inference service is, as in the deployment)."""
    settings = deployment.settings.model_copy(update={"processors_app_id": f"absent-processors-{uuid.uuid4().hex[:8]}"})
    with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS, trust_loopback=True)) as url:
        yield url
