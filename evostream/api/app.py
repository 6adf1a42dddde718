"""``evostream api``: the HTTP API and the live dashboard, one FastAPI app.

Every read answers from the same views the CLI prints: a ``Recent`` fold of the topics (kept live by a ``Tail``)
and the governance log replayed (``GovernanceView``). Nothing is recomputed here: risk, drift and profiles are what
the processors published. Server-sent events push each new record to the dashboard as the tail reads it."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from evostream.api.auth import Auth, Caller, RegistryCache
from evostream.api.errors import BusyError, TimeoutAnswerError, install
from evostream.api.limits import BodyLimit
from evostream.core.bus.admin import cluster_metadata, ensure_topics, group_lags
from evostream.core.clock import now_us
from evostream.core.errors import ConflictError, EvoError, NotFoundError
from evostream.core.settings import Settings
from evostream.schemas.catalog import ALERTS, CATALOG, COMPLETIONS, DRIFT, PROFILES, RISK, STEPS
from evostream.views.governance import (
    GovernanceView,
    finding_doc,
    parse_time,
    provenance_doc,
    registry_doc,
    version_doc,
)
from evostream.views.recent import Recent, Record, at_least, plain
from evostream.views.tail import WATCHED, Tail
from evostream.views.token_text import TokenDecoder, local_resolver

STATIC = Path(__file__).parent / "static"
EVENTS = {STEPS: "step", COMPLETIONS: "completion", RISK: "risk", ALERTS: "alert", DRIFT: "drift", PROFILES: "profile"}
GROUPS = ("evostream-inference", "evostream-evolution")
MAX_PROMPT_CHARS = 4000
Severity = Literal["INFO", "WARNING", "CRITICAL"]


@dataclass
class ApiConfig:
    bootstrap: str
    settings: Settings
    open_reads: bool = False
    """Reads from other machines without a key (they are open to this machine's clients anyway)."""
    cors_origins: list[str] = field(default_factory=list)
    """Origins allowed to call from a browser page of theirs; none by default (CORS off)."""
    max_body_bytes: int = 64 * 1024
    history_s: float = 3600.0
    """How far back the live views start when the API starts."""
    allowed_hosts: list[str] | None = None
    """Host headers accepted (None: any). ``evostream api`` bound to loopback accepts only loopback names, so a web
    page of another site cannot reach it through DNS rebinding."""
    max_streams: int = 64
    """Server-sent event streams open at once; more get 503."""


class InferBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The prompt.")
    max_new_tokens: int = Field(32, ge=1, le=256)
    timeout_s: float = Field(30.0, gt=0, le=300, description="How long to wait for the answer.")
    risk_wait_s: float = Field(2.0, ge=0, le=30, description="How long to wait, after the answer, for its risk.")


class RollbackBody(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    to: str = Field("previous", min_length=1, max_length=200, description="A version, or 'previous'.")
    reason: str = Field(min_length=1, max_length=2000)


class ApproveBody(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=200)
    stage: Literal["staging", "production"] = "production"
    reason: str = Field("", max_length=2000)


class EvolveBody(BaseModel):
    model: str | None = Field(None, max_length=200, description="Registry model name (default: the embedded model's).")
    recipes: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Candidates to build, e.g. 'drop=1,heads=0.5' (default: a search of four).",
    )
    steps: int = Field(1500, ge=0, le=20000, description="Distillation steps per candidate.")
    held_out: int = Field(50, ge=1, le=500, description="Held-out suite prompts per task the sandbox measures.")
    reps: int = Field(5, ge=1, le=20, description="Side-by-side speed repetitions.")
    propose: bool = Field(True, description="Register and propose the chosen candidate to governance.")


@dataclass
class EvolveJob:
    """One evolution cycle started through the API, run on a thread of its own; its progress lines as they come."""

    job_id: str
    actor: str
    started_us: int
    state: Literal["running", "done", "failed"] = "running"
    lines: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    version: str | None = None
    passed: bool | None = None
    error: str | None = None
    ended_us: int | None = None


class Api:
    """The app's parts: the live fold and its tail, the governance view, the request client, the token decoder."""

    def __init__(self, cfg: ApiConfig, tail: bool = True) -> None:
        self.cfg = cfg
        self.recent = Recent()
        self.governance = GovernanceView(cfg.bootstrap, cfg.settings)
        self.registry = RegistryCache(self.governance)
        self.auth = Auth(self.registry, cfg.open_reads)
        self.tokens = TokenDecoder(local_resolver(cfg.settings.artifacts_dir, self.registry.get))
        self.streams = 0
        """Event streams open now (the cap counts these, not the API's own subscribers)."""
        self.write_lock = threading.Lock()
        """One governance write at a time from this API (each is a transaction of the log's one writer id)."""
        self.tail: Tail | None = None
        self.watching_governance = False
        if tail:
            # the topics read are created if missing (an API may start before any service); the governance log's
            # topic exists once `governance init` ran: until then its events are not followed (health says so)
            ensure_topics(cfg.bootstrap, [t for t in CATALOG if t.name in WATCHED])
            gov = cfg.settings.governance_topic
            self.watching_governance = gov in cluster_metadata(cfg.bootstrap, 10.0).topics
            topics = (*WATCHED, gov) if self.watching_governance else WATCHED
            self.tail = Tail(cfg.bootstrap, self.recent, topics, cfg.history_s, schemas={gov: "GovernanceEvent"})
            self.tail.subscribe(lambda topic, _rec: self.registry.invalidate() if topic == gov else None)
        self._client: Any = None
        self.jobs: dict[str, EvolveJob] = {}
        self._lock = threading.Lock()  # guards the request client and the jobs

    def client(self) -> Any:
        """The one request client (made on first use; two first requests at once make one)."""
        with self._lock:
            if self._client is None:
                from evostream.producers.client import InferenceClient

                self._client = InferenceClient(self.cfg.bootstrap, tenant="http")
            return self._client

    def evolve(self, body: EvolveBody, actor: str) -> EvolveJob:
        """Start one cycle on a thread (ConflictError while another runs: cycles measure speed side by side, and
        two at once would measure each other)."""
        from evostream.consumers.evolution.recipe import Recipe
        from evostream.models.default_model import MODEL_ID

        for r in body.recipes:
            Recipe.parse(r)  # a bad recipe is refused now (400), not accepted and failed later
        model = body.model or MODEL_ID
        if model not in self.registry.get().models:
            raise NotFoundError(f"no model {model!r} in the registry; GET /registry lists them")
        with self._lock:
            for old in list(self.jobs)[:-19]:  # the last 20 jobs are kept
                del self.jobs[old]
            running = [j for j in self.jobs.values() if j.state == "running"]
            if running:
                raise ConflictError(
                    f"evolution cycle {running[0].job_id} is still running; GET /evolve/{running[0].job_id}"
                )
            job = EvolveJob(uuid.uuid4().hex[:12], actor, now_us())
            self.jobs[job.job_id] = job
        threading.Thread(target=self._cycle, args=(job, body), name=f"evolve-{job.job_id}", daemon=True).start()
        return job

    def _cycle(self, job: EvolveJob, body: EvolveBody) -> None:
        from evostream.models.default_model import MODEL_ID
        from evostream.wiring.evolution import consumer, cycle_config, cycle_line

        try:
            cfg = cycle_config(body.recipes or None, body.steps, body.held_out, body.reps)
            evo = consumer(self.cfg.settings, self.cfg.bootstrap, body.model or MODEL_ID, cfg, job.lines.append)
            out = evo.cycle(f"api:{job.actor}:{job.job_id}", propose_it=body.propose)
            job.candidates = [cycle_line(c) for c in (out.result.candidates if out.result else [])]
            job.version, job.passed = out.version, out.passed
            job.state = "done"
        except Exception as e:  # a failed cycle is the job's answer, never the API's end
            job.error, job.state = f"{type(e).__name__}: {e}", "failed"
        finally:
            job.ended_us = now_us()
            self.registry.invalidate()

    def close(self) -> None:
        if self.tail is not None:
            self.tail.close()
        if self._client is not None:
            self._client.close()

    def read(self, fn: Callable[[Recent], Any]) -> Any:
        if self.tail is None:
            return fn(self.recent)
        with self.tail.lock:
            return fn(self.recent)


# Plain functions: FastAPI runs them on its thread pool, so checking a key (a replay of the log, at most every few
# seconds) never holds the event loop. The bearer scheme is declared for the OpenAPI document.
_bearer = HTTPBearer(auto_error=False, description="An actor key: `evostream governance api-token --actor NAME`.")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _reader(request: Request) -> Caller:
    caller: Caller = request.app.state.api.auth.reader(request)
    return caller


def _publisher(request: Request, _: Bearer) -> Caller:
    caller: Caller = request.app.state.api.auth.publisher(request)
    return caller


def _writer(request: Request, _: Bearer) -> Caller:
    caller: Caller = request.app.state.api.auth.writer(request)
    return caller


def _admin(request: Request, _: Bearer) -> Caller:
    caller: Caller = request.app.state.api.auth.admin(request)
    return caller


Reader = Annotated[Caller, Depends(_reader)]
Publisher = Annotated[Caller, Depends(_publisher)]
Writer = Annotated[Caller, Depends(_writer)]
Admin = Annotated[Caller, Depends(_admin)]


def create_app(cfg: ApiConfig, tail: bool = True) -> FastAPI:
    api = Api(cfg, tail)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        api.close()

    app = FastAPI(
        title="evostream",
        version="0.1.0",
        description="Watch, profile, evolve and govern language models on Apache Kafka. Reads are open to this "
        "machine's clients; writes need an actor key (`Authorization: Bearer <token>`, from "
        "`evostream governance api-token --actor NAME`).",
        lifespan=lifespan,
    )
    app.state.api = api
    install(app)
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    if cfg.allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.allowed_hosts)
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    # --- reads ---------------------------------------------------------------------------------------------------
    @app.get("/health", tags=["reads"], summary="Broker, active versions, consumer lags, the live views")
    def health(_: Reader) -> dict[str, Any]:
        out: dict[str, Any] = {"broker": {"bootstrap": cfg.bootstrap, "reachable": False}}
        try:
            md = cluster_metadata(cfg.bootstrap, 3.0)
            out["broker"].update(reachable=True, brokers=len(md.brokers), topics=len(md.topics))
            out["consumer_lags"] = group_lags(cfg.bootstrap, (*GROUPS, cfg.settings.processors_app_id))
            reg = api.registry.get()
            out["active_versions"] = {name: m["production"] for name, m in sorted(reg.models.items())}
        except EvoError as e:
            out["error"] = str(e)
        tail = api.tail
        live_error = None if tail is None or tail.error is None else str(tail.error)
        if tail is not None and not tail.alive:
            live_error = "the live view's reader stopped (see the API's log)"
        out["live"] = {
            "caught_up": bool(tail and tail.caught_up.is_set()),
            "error": live_error,
            "streams": api.streams,
            "governance_followed": api.watching_governance,
            "records": api.read(lambda r: dict(r.seen)),
        }
        out["status"] = "ok" if out["broker"]["reachable"] and not live_error and "error" not in out else "degraded"
        return out

    @app.get("/overview", tags=["reads"], summary="Throughput, answering versions and alert rate, last minute")
    def overview(_: Reader) -> dict[str, Any]:
        return dict(api.read(lambda r: r.overview(now_us())))

    @app.get("/traces", tags=["reads"], summary="The latest traces, newest first")
    def traces(_: Reader, last: Annotated[int, Query(ge=1, le=500)] = 20) -> list[dict[str, Any]]:
        return list(api.read(lambda r: [t.summary() for t in r.traces(last)]))

    @app.get("/traces/{trace_id}", tags=["reads"], summary="One trace: its steps, completion, risk and alerts")
    def trace(trace_id: str, _: Reader) -> dict[str, Any]:
        doc = api.read(lambda r: None if (t := r.trace(trace_id)) is None else t.doc())
        if doc is None:
            raise NotFoundError(f"no trace {trace_id!r} among the latest {api.recent.max_traces} traces")
        return dict(doc)

    @app.get("/alerts", tags=["reads"], summary="Recent risk alerts, oldest first")
    def alerts(
        _: Reader,
        last: Annotated[int, Query(ge=1, le=1000)] = 50,
        min_severity: Severity = "INFO",
        model: str | None = None,
    ) -> list[dict[str, Any]]:
        return [plain(a) for a in api.read(lambda r: r.alerts(last, min_severity, model))]

    @app.get(
        "/alerts/stream",
        tags=["live"],
        summary="Risk alerts as server-sent events, as they are published",
        response_class=StreamingResponse,
    )
    async def alerts_stream(request: Request, _: Reader, min_severity: Severity = "INFO") -> StreamingResponse:
        return sse(api, request, {ALERTS}, lambda t, r: at_least(r, min_severity))

    @app.get(
        "/stream",
        tags=["live"],
        summary="Steps, completions, risk, alerts and drift as server-sent events",
        response_class=StreamingResponse,
    )
    async def stream(request: Request, _: Reader, trace_id: str | None = None) -> StreamingResponse:
        topics = {STEPS, COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, cfg.settings.governance_topic}
        return sse(api, request, topics, lambda t, r: trace_id is None or r.get("trace_id") == trace_id)

    @app.get("/drift", tags=["reads"], summary="The latest drift windows, oldest first")
    def drift(
        _: Reader, last: Annotated[int, Query(ge=1, le=1000)] = 50, model: str | None = None
    ) -> list[dict[str, Any]]:
        return [plain(w) for w in api.read(lambda r: r.drift(last, model))]

    @app.get("/profiles", tags=["reads"], summary="The latest profile of each model version, token paths as text")
    def profiles(_: Reader, model: str | None = None) -> list[dict[str, Any]]:
        out = []
        for p in api.read(lambda r: r.profiles(model)):
            doc = plain(p)
            version = str(p["model_version"])
            doc["top_token_paths"] = [
                {
                    **path,
                    "text": api.tokens.path_text(version, path["token_ids"]),
                    "pieces": api.tokens.pieces(version, path["token_ids"]),
                }
                for path in p["top_token_paths"]
            ]
            out.append(doc)
        return out

    @app.get("/registry", tags=["governance"], summary="Every model, version, stage, lineage and pending approval")
    def registry(_: Reader, as_of: str | None = None) -> dict[str, Any]:
        r = api.governance.replayed(as_of)
        return {**registry_doc(r.registry), "findings": [finding_doc(f) for f in r.findings]}

    @app.get("/registry/{version}", tags=["governance"], summary="One version: artifact, metrics, lineage, approvals")
    def registry_version(version: str, _: Reader, as_of: str | None = None) -> dict[str, Any]:
        return version_doc(api.governance.replayed(as_of).registry, version)

    @app.get("/governance/audit", tags=["governance"], summary="Who did what, when and why, verified as it is read")
    def audit(_: Reader, since: str | None = None, actor: str | None = None) -> dict[str, Any]:
        rows, findings = api.governance.audit(parse_time(since) if since else None, actor)
        return {"events": rows, "findings": [finding_doc(f) for f in findings]}

    @app.get("/provenance/{trace_id}", tags=["governance"], summary="Which version answered a trace, and why it served")
    def provenance(trace_id: str, _: Reader) -> dict[str, Any]:
        done = api.read(lambda r: None if (t := r.trace(trace_id)) is None else t.completion)
        if done is None:
            raise NotFoundError(f"no completion of trace {trace_id!r} among the latest {api.recent.max_traces} traces")
        return provenance_doc(api.governance.replayed(), done)

    # --- writes --------------------------------------------------------------------------------------------------
    @app.post("/infer", tags=["inference"], summary="Publish a request, wait for its answer (and its risk)")
    async def infer(body: InferBody, _: Publisher) -> dict[str, Any]:
        from evostream.producers.client import ReplyTimeoutError

        client = await asyncio.to_thread(api.client)  # made once; its reader is positioned off the loop
        try:
            submit = client.asubmit(body.prompt, max_new_tokens=body.max_new_tokens)
            reply = await asyncio.wait_for(submit, body.timeout_s)
        except TimeoutError as e:
            raise TimeoutAnswerError(f"no free request slot within {body.timeout_s:g} s: too many in flight") from e
        try:
            rec = await reply.aresult(body.timeout_s)
        except ReplyTimeoutError as e:
            raise TimeoutAnswerError(f"no answer within {body.timeout_s:g} s (is `evostream serve` running?)") from e
        risk = await wait_for(lambda: api.read(lambda r: _final_risk(r, rec["trace_id"])), body.risk_wait_s)
        return plain(
            {
                "request_id": rec["request_id"],
                "trace_id": rec["trace_id"],
                "model_version": rec["model_version"],
                "answer": rec["output_text"],
                "token_count": rec["token_count"],
                "finish_reason": rec["finish_reason"],
                "error": rec["error"],
                "risk": risk,
            }
        )

    @app.post("/governance/rollback", tags=["governance"], summary="Make an earlier version serve production again")
    def rollback(body: RollbackBody, caller: Writer) -> dict[str, Any]:
        ev = acting(api, caller, lambda gov: gov.rollback(body.model, body.to, body.reason))
        return {
            "event": ev.type,
            "sequence": ev.sequence,
            "actor": ev.actor,
            "model": body.model,
            "from_version": ev.payload["from_version"],
            "version": ev.payload["version"],
        }

    @app.post("/governance/approve", tags=["governance"], summary="Approve a version for a stage")
    def approve(body: ApproveBody, caller: Writer) -> dict[str, Any]:
        ev = acting(api, caller, lambda gov: gov.approve(body.model, body.version, body.stage, body.reason))
        return {
            "event": ev.type,
            "sequence": ev.sequence,
            "actor": ev.actor,
            "model": body.model,
            "version": body.version,
            "stage": body.stage,
        }

    @app.post("/evolve", tags=["evolution"], status_code=202, summary="Start one evolution cycle now (admin key)")
    def evolve(body: EvolveBody, caller: Admin) -> dict[str, Any]:
        assert caller.actor is not None
        return asdict(api.evolve(body, caller.actor))

    @app.get("/evolve/{job_id}", tags=["evolution"], summary="An evolution cycle started here: progress and verdict")
    def evolve_job(job_id: str, _: Reader) -> dict[str, Any]:
        job = api.jobs.get(job_id)
        if job is None:
            raise NotFoundError(
                f"no evolution job {job_id!r} on this API (jobs: {', '.join(list(api.jobs)) or 'none'})"
            )
        return asdict(job)

    # --- the dashboard -------------------------------------------------------------------------------------------
    if STATIC.exists():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def acting(api: Api, caller: Caller, act: Callable[[Any], Any]) -> Any:
    """``act`` with the caller's commands, signed with its key from this machine (ForbiddenError if it is not here),
    one write at a time; the registry is read afresh after."""
    from evostream.api.errors import ForbiddenError
    from evostream.core.errors import GovernanceError

    assert caller.actor is not None
    with api.write_lock:
        try:
            gov = api.governance.actor(caller.actor)
        except GovernanceError as e:
            raise ForbiddenError(
                f"actor {caller.actor!r} holds a valid key, but its private key is not on this "
                "server to sign with; act from the machine that holds it"
            ) from e
        try:
            return act(gov)
        finally:
            gov.log.close()
            api.registry.invalidate()


def _final_risk(r: Recent, trace_id: str) -> dict[str, Any] | None:
    t = r.trace(trace_id)
    return None if t is None or "FINAL" not in t.risk else dict(t.risk["FINAL"])


async def wait_for(fn: Callable[[], Any], timeout_s: float, every_s: float = 0.05) -> Any:
    """``fn()`` once it is not None, or None after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (out := fn()) is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(every_s)
    return out


def sse(api: Api, request: Request, topics: set[str], keep: Callable[[str, Record], bool]) -> StreamingResponse:
    """A server-sent event per record of ``topics`` that ``keep`` accepts, from now on; a comment every 15 s keeps
    proxies from closing an idle stream. A client too slow to read loses the oldest records first, and is told."""
    if api.tail is None:
        raise BusyError("this API runs without a live view: no streams")
    if api.streams >= api.cfg.max_streams:
        raise BusyError(f"{api.cfg.max_streams} event streams are open already; try again later")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Record]] = asyncio.Queue(maxsize=2000)
    dropped = [0]

    def put(item: tuple[str, Record]) -> None:
        if queue.full():
            queue.get_nowait()
            dropped[0] += 1
        queue.put_nowait(item)

    def push(topic: str, rec: Record) -> None:
        if topic in topics and keep(topic, rec):
            loop.call_soon_threadsafe(put, (topic, rec))

    async def events() -> AsyncIterator[bytes]:
        unsubscribe = api.tail.subscribe(push)  # type: ignore[union-attr]
        api.streams += 1  # on the event loop only: no lock needed
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    topic, rec = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if dropped[0]:
                    yield f"event: dropped\ndata: {dropped[0]}\n\n".encode()
                    dropped[0] = 0
                event = EVENTS.get(topic, "governance")
                doc = plain(rec, drop=("prompt_embedding", "signature", "payload_json"))
                yield f"event: {event}\ndata: {json.dumps(doc, default=str, allow_nan=False)}\n\n".encode()
        finally:
            api.streams -= 1
            unsubscribe()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
