"""The front door's fixes (issue 27's review): budgets hold an estimate at admission and charge every answer whether
or not its caller waits; the cache serves exact repeats by default and a near repeat only with the same letters and
digits; an answer in flight when a governance event clears the cache is not stored; an API started before the
governance log existed answers ``/health`` at once and follows the log once it is there; failed answers are 502 on
``/v1``; a routed request's stream sends only its final answer; ``/infer`` does not wait for a risk report that
cannot come."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from evostream.api.config import ApiConfig
from evostream.api.door import Ask, FrontDoor
from evostream.api.errors import AnswerFailedError, status_of
from evostream.api.routes.infer import has_risk
from evostream.api.routes.openai import Follower, _checked
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import init
from evostream.core.clock import now_us
from evostream.core.settings import load_settings
from evostream.producers.client import BadRequestError
from evostream.schemas.catalog import COMPLETIONS, STEPS
from evostream.views.governance import GovernanceView, anchor_file, checkpoints_path
from evostream.views.token_text import TokenDecoder, local_resolver
from tests.api.conftest import HOSTS, Deployment, served
from tests.api.test_openai import client, find


def infer(url: str, token: str, prompt: str, tenant: str, **kw: Any) -> httpx.Response:
    body = {"prompt": prompt, "user": tenant, "risk_wait_s": 0, **kw}
    return httpx.post(url + "/infer", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)


# --- budgets -------------------------------------------------------------------------------------------------------
def test_a_caller_that_gives_up_is_charged_all_the_same(kafka: str, deployment: Deployment, tmp_path: Path) -> None:
    """Before, only the answers a caller still waited for were charged: four requests at timeout_s 0.001 against a
    budget of 1 token a day were all answered, none refused."""
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"evader": {"tokens_per_day": 1}}))
    settings = deployment.settings.model_copy(update={"tenant_limits": limits})
    since = now_us()
    statuses = []
    with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS)) as url:
        for i in range(4):
            r = infer(url, deployment.admin_token, f"copy: a b c {i}", "evader", timeout_s=0.001, max_new_tokens=64)
            statuses.append(r.status_code)
            time.sleep(3)  # the service answers meanwhile
    answered = find(kafka, COMPLETIONS, "Completion", since, lambda r: r["tenant"] == "evader")
    assert statuses[0] == 504 and statuses[1:] == [429, 429, 429], (statuses, len(answered))
    assert len(answered) == 1


def test_requests_at_once_cannot_pass_the_budget_together(kafka: str, deployment: Deployment, tmp_path: Path) -> None:
    """Before, every request admitted before the first answer was charged got in: six at once against a budget
    for two (each may take its prompt and 32 tokens: about 48) were all answered."""
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"crowd": {"tokens_per_day": 100}}))
    settings = deployment.settings.model_copy(update={"tenant_limits": limits})
    with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS)) as url:

        async def all_at_once() -> list[int]:
            async with httpx.AsyncClient(timeout=60) as http:
                headers = {"Authorization": f"Bearer {deployment.admin_token}"}
                calls = [
                    http.post(
                        url + "/infer",
                        json={"prompt": f"copy: x y {i}", "user": "crowd", "max_new_tokens": 32, "risk_wait_s": 0},
                        headers=headers,
                    )
                    for i in range(6)
                ]
                return [r.status_code for r in await asyncio.gather(*calls)]

        statuses = asyncio.run(all_at_once())
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429], statuses


# --- the cache -----------------------------------------------------------------------------------------------------
def test_the_default_cache_serves_no_other_prompts_answer(kafka: str, deployment: Deployment) -> None:
    """Before (cache_similarity 0.97 by default), 'date: 2020-01-03' was served the answer of 'date: 2020-01-02'
    (MiniLM cosine 0.987) and 'lookup: d; ...' that of 'lookup: c; ...' (0.992)."""
    tenant = f"near-{uuid.uuid4().hex[:6]}"
    out = {}
    with served(ApiConfig(kafka, deployment.settings, allowed_hosts=HOSTS)) as url:
        for p in [
            "date: 2020-01-02",
            "date: 2020-01-03",
            "lookup: c; a=1 b=2 c=3 d=4",
            "lookup: d; a=1 b=2 c=3 d=4",
            "reverse: abc",
            "reverse: Abc",
            "reverse: abc",
        ]:
            r = infer(url, deployment.admin_token, p, tenant, max_new_tokens=16).json()
            out.setdefault(p, []).append(r["cached"])
    assert out["date: 2020-01-03"] == [False] and out["lookup: d; a=1 b=2 c=3 d=4"] == [False], out
    assert out["reverse: Abc"] == [False] and out["reverse: abc"] == [False, True], out


def door_of(tmp_path: Path, **settings: Any) -> FrontDoor:
    return FrontDoor("127.0.0.1:1", load_settings(governance_dir=tmp_path, **settings))


def answer(request_id: str, text: str = "c b a", finish: str = "STOP") -> dict[str, Any]:
    return {
        "trace_id": uuid.uuid4().hex,
        "request_id": request_id,
        "model_version": "m@1",
        "output_text": text,
        "token_count": 3,
        "prompt_token_count": 5,
        "finish_reason": finish,
        "error": None,
        "cost_usd": 0.0,
        "cached": False,
    }


def test_an_answer_in_flight_when_the_cache_is_forgotten_is_not_stored(tmp_path: Path) -> None:
    """Before, forget() emptied the cache but the answer of a request in flight then (maybe the replaced model's)
    was stored when it came, and served to the next repeat."""
    door = door_of(tmp_path)
    ask = Ask("acme", "reverse: a b c", "evostream", 16)

    async def run() -> tuple[Any, Any, Any]:
        before, _ = await door.lookup(ask, "r1")
        door.forget()  # a governance event while r1 is generated
        await door.answered(ask, answer("r1"), None)
        await door.lookup(ask, "r2")
        stored = door.cache.get(ask.tenant, ask.prompt, ask.cache_params, time.monotonic())
        await door.answered(ask, answer("r2", "c b a!"), None)
        again = door.cache.get(ask.tenant, ask.prompt, ask.cache_params, time.monotonic())
        return before, stored, again

    before, stored, again = asyncio.run(run())
    assert before is None and stored is None
    assert again is not None and again.value["output_text"] == "c b a!"  # looked up after the forget: kept


def test_an_escalated_partial_and_the_final_answer_are_both_charged_once(tmp_path: Path) -> None:
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"acme": {"tokens_per_day": 10_000}}))
    door = door_of(tmp_path, tenant_limits=limits)
    assert door.budgets is not None
    door.admit(Ask("acme", "reverse: abcdef", "evostream", 32), "r")
    assert door.budgets.held("acme")[0] == len("reverse: abcdef") + 1 + 32
    partial, final = answer("r", "fe", "ESCALATED"), answer("r", "fedcba")
    door.completed(partial)  # the live tail's: nobody waits for a partial
    door.completed(final)
    asyncio.run(door.answered(Ask("acme", "reverse: abcdef", "evostream", 32), final, None))  # the caller's: seen
    assert door.budgets.used("acme", time.time()) == (16, 0.0) and door.budgets.held("acme") == (0, 0.0)


def test_a_shadow_answer_is_not_charged_and_does_not_settle_the_request(tmp_path: Path) -> None:
    """A rollout's candidate answered a mirrored copy of the request: the tenant never gets it, so it costs them
    nothing and the request's hold waits for its answer."""
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"acme": {"tokens_per_day": 10_000}}))
    door = door_of(tmp_path, tenant_limits=limits)
    assert door.budgets is not None
    door.admit(Ask("acme", "reverse: abcdef", "evostream", 32), "r")
    held = door.budgets.held("acme")
    door.completed(answer("r", "fedcba") | {"role": "SHADOW", "cost_usd": 0.5})  # read first by the live tail
    assert door.budgets.used("acme", time.time()) == (0, 0.0) and door.budgets.held("acme") == held
    door.completed(answer("r", "fedcba") | {"role": "ANSWER"})
    assert door.budgets.used("acme", time.time()) == (8, 0.0) and door.budgets.held("acme") == (0, 0.0)


# --- an API before the governance log ------------------------------------------------------------------------------
def test_an_api_started_before_the_governance_log_answers_health_and_follows_the_log_once_it_exists(
    kafka: str, deployment: Deployment, tmp_path: Path
) -> None:
    """Before, GET /health took 30 s (a reader waiting out its timeout for the missing topic) every time, one
    behind the other; and the API never followed the log created after it started: its cache was never cleared."""
    topic = f"test-api-late-governance-{uuid.uuid4().hex[:8]}"
    settings = deployment.settings.model_copy(
        update={"governance_topic": topic, "governance_dir": tmp_path / "gov", "cache_ttl_s": 600.0}
    )
    tenant = f"late-{uuid.uuid4().hex[:6]}"
    with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS, trust_loopback=True)) as url:
        started = time.monotonic()
        health = httpx.get(url + "/health", timeout=60)
        took = time.monotonic() - started
        assert took < 10, took
        doc = health.json()
        assert doc["status"] == "degraded" and topic in doc["error"] and "governance init" in doc["error"]
        assert not doc["live"]["governance_followed"]
        first = httpx.post(url + "/infer", json={"prompt": "copy: late log", "user": tenant, "risk_wait_s": 0}).json()
        again = httpx.post(url + "/infer", json={"prompt": "copy: late log", "user": tenant, "risk_wait_s": 0}).json()
        assert not first["cached"] and again["cached"]
        glog = GovernanceLog(kafka, topic=topic)
        try:
            init(
                glog,
                settings.governance_dir / "keys",
                "admin",
                checkpoints=checkpoints_path(settings),
                anchor=anchor_file(settings),
            )
        finally:
            glog.close()
        deadline = time.monotonic() + 30
        while not httpx.get(url + "/health", timeout=30).json()["live"]["governance_followed"]:
            assert time.monotonic() < deadline, "the API never followed the governance log"
            time.sleep(0.5)
        after = httpx.post(url + "/infer", json={"prompt": "copy: late log", "user": tenant, "risk_wait_s": 0}).json()
        assert not after["cached"]  # the genesis event cleared the cache
        assert httpx.get(url + "/health", timeout=30).json()["active_versions"] == {}


# --- failed answers, streams, risk ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        "model error: CUDA out of memory",
        "reference external:big: http://127.0.0.1:9/v1: ConnectError: refused",
        "reference governed:m@2: model error: boom",
    ],
)
def test_a_failed_answer_is_a_502(error: str) -> None:
    """Before, AnswerFailedError was no status of its own (400) and a reference's failure a BadRequestError (400)."""
    with pytest.raises(AnswerFailedError) as e:
        _checked({**answer("r"), "finish_reason": "ERROR", "error": error})
    assert status_of(e.value) == 502


def test_a_request_the_service_refused_stays_a_400() -> None:
    with pytest.raises(BadRequestError) as e:
        _checked({**answer("r"), "finish_reason": "ERROR", "error": "prompt of 900 tokens exceeds the limit of 512"})
    assert status_of(e.value) == 400


def test_a_502_has_openais_shape_on_v1(kafka: str, deployment: Deployment) -> None:
    from fastapi import FastAPI

    from evostream.api import errors

    app = FastAPI()
    errors.install(app)

    @app.get("/v1/fail")
    def fail() -> None:
        raise AnswerFailedError("the inference service failed the answer: model error: boom")

    with served(app) as url:
        r = httpx.get(url + "/v1/fail")
    assert r.status_code == 502 and r.json()["error"]["type"] == "server_error"
    assert r.json()["error"]["code"] == "AnswerFailedError"


def test_a_routed_stream_holds_a_partial_answer_and_sends_the_final_one(kafka: str, deployment: Deployment) -> None:
    """The steps of a real answer, as if the self model's partial before a move to the reference: held (before,
    they were streamed, and the final answer came after them on a line of its own)."""
    since = now_us()
    out = httpx.post(deployment.url + "/infer", json={"prompt": "copy: one two three", "risk_wait_s": 0}).json()
    steps = find(kafka, STEPS, "GenerationStep", since, lambda r: r["trace_id"] == out["trace_id"])
    registry = GovernanceView(kafka, deployment.settings).replayed
    decoder = TokenDecoder(local_resolver(deployment.settings.artifacts_dir, lambda: registry().registry))

    async def follow(follower: Follower, decision_after: int | None) -> list[str]:
        pieces = []
        for i, rec in enumerate(steps):
            if i == decision_after:
                follower.routed()
            pieces.append(await follower.step(rec))
        return pieces

    held = Follower(decoder, hold=True)
    assert asyncio.run(follow(held, None)) == [""] * len(steps)
    assert held.finish({"output_text": "the reference's answer"}) == "the reference's answer"
    late = Follower(decoder)
    assert asyncio.run(follow(late, 0)) == [""] * len(steps)  # the decision came before the first step
    assert late.finish({"output_text": "the reference's answer"}) == "the reference's answer"


LONG = "reverse: abcdefghijklmnopqrstuvwxyz"
"""An answer of a dozen tokens and more, generated over several of the live tail's reads."""


def test_a_stream_through_an_api_of_a_route_sends_the_answer_only_with_the_final_completion(
    kafka: str, deployment: Deployment
) -> None:
    """The held path end to end: every piece of text comes with the final Completion. (The embedded model is fast
    enough that its steps often reach the tail after its Completion, unheld too: the Follower test above is the one
    that shows the old stream sending a partial answer.)"""
    settings = deployment.settings.model_copy(update={"route": "default"})
    since = now_us()
    with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS, trust_loopback=True)) as url:
        oa = client(url, "sk-no-key-needed")
        chunks = list(oa.completions.create(model="evostream", prompt=LONG, max_tokens=200, temperature=0, stream=True))
    texts = [(c.choices[0].text, c.model_extra["evostream"]["trace_id"]) for c in chunks]  # type: ignore[index]
    assert all(trace is not None for text, trace in texts if text), texts  # no text before the final Completion
    rec = find(kafka, COMPLETIONS, "Completion", since, lambda r: r["trace_id"] == texts[-1][1])[0]
    assert "".join(t for t, _ in texts) == rec["output_text"] != ""


def test_infer_waits_for_no_risk_report_of_a_cached_or_external_answer() -> None:
    assert not has_risk({"cached": True, "model_version": "m@1"})
    assert not has_risk({"cached": False, "model_version": "external:big-model"})
    assert has_risk({"cached": False, "model_version": "m@1"})


def test_a_routing_decision_of_the_service_makes_the_door_hold_streams(tmp_path: Path) -> None:
    door = door_of(tmp_path)
    assert not door.routes
    door.decided({"stage": "ADMISSION"})  # the door's own (a refusal, a cache hit)
    assert not door.routes
    door.decided({"stage": "PROMPT"})
    assert door.routes
