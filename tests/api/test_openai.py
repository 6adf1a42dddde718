"""The OpenAI-compatible endpoints, driven by OpenAI's own client library (the ``openai`` package) against
``evostream api`` on the real broker, the deployment's inference service answering: completions and chat, whole and
streamed; the front door's refusals (429 with Retry-After, the refusal on evo.routes) and its response cache (a
repeated prompt served as a cached Completion on evo.completions)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from evostream.api.config import ApiConfig
from evostream.api.routes.openai import Follower
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.schemas.catalog import COMPLETIONS, ROUTES, STEPS
from evostream.views.governance import GovernanceView
from evostream.views.token_text import TokenDecoder, local_resolver
from tests.api.conftest import HOSTS, Deployment, served

LIMITS = {
    "limited": {"requests_per_s": 0.01, "burst": 1},
    "thrifty": {"tokens_per_day": 1},
    "capped": {"requests_per_s": 0.01, "burst": 1},
}


def find(
    kafka: str, topic: str, schema: str, since_us: int, keep: Callable[[dict[str, Any]], bool], timeout_s: float = 30
) -> list[dict[str, Any]]:
    """The records of ``topic`` since ``since_us`` that ``keep`` accepts; reads until one came (or time is up), then
    until the topic has been quiet for a second."""
    found: list[dict[str, Any]] = []
    with TopicReader(
        kafka,
        topic,
        schema,
        since_us=since_us - 5_000_000,
        idle_s=None,
        timeout_s=timeout_s,
        until=lambda: bool(found),
        name="test-openai",
    ) as reader:
        found.extend(rec for rec in reader if keep(rec))
    with TopicReader(kafka, topic, schema, since_us=since_us - 5_000_000, idle_s=1.0, name="test-openai") as reader:
        return [rec for rec in reader if keep(rec)]


def completion_of(kafka: str, trace_id: str, since_us: int) -> dict[str, Any]:
    recs = find(kafka, COMPLETIONS, "Completion", since_us, lambda r: r["trace_id"] == trace_id)
    assert len(recs) == 1, recs
    return recs[0]


@pytest.fixture(scope="module")
def door(kafka: str, deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second API on the deployment's broker with tenant limits and the response cache, that needs a key."""
    limits = tmp_path_factory.mktemp("door") / "limits.json"
    limits.write_text(json.dumps(LIMITS))
    settings = deployment.settings.model_copy(
        update={"tenant_limits": limits, "cache_similarity": 0.95, "cache_ttl_s": 600.0}
    )
    with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS)) as url:
        yield url


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_the_openai_client_completes_text_and_chat(kafka: str, deployment: Deployment) -> None:
    since = now_us()
    # a trusted local client (--trust-loopback) sends OpenAI's placeholder key: taken for none
    oa = client(deployment.url, "sk-no-key-needed")
    text = oa.completions.create(model="evostream", prompt="copy: red green blue", max_tokens=12, temperature=0)
    assert text.object == "text_completion" and text.model == deployment.v2
    choice = text.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.text
    info = text.model_extra["evostream"]  # type: ignore[index]
    rec = completion_of(kafka, info["trace_id"], since)
    assert choice.text == rec["output_text"] and not rec["cached"]
    assert text.usage is not None and text.usage.completion_tokens == rec["token_count"]
    assert text.usage.total_tokens == rec["token_count"] + rec["prompt_token_count"]

    chat = oa.chat.completions.create(
        model="evostream",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "copy: one two"},
            {"role": "assistant", "content": "one two"},
            {"role": "user", "content": "reverse: one two three"},
        ],
        max_tokens=12,
        temperature=0,
    )
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    rec = completion_of(kafka, chat.model_extra["evostream"]["trace_id"], since)  # type: ignore[index]
    assert chat.choices[0].message.content == rec["output_text"]
    same = httpx.post(deployment.url + "/infer", json={"prompt": "reverse: one two three", "max_new_tokens": 12})
    assert same.json()["answer"] == rec["output_text"]  # the last user message is the prompt


def test_the_openai_client_streams_text_and_chat(kafka: str, deployment: Deployment) -> None:
    since = now_us()
    oa = client(deployment.url, "sk-no-key-needed")
    chunks = list(
        oa.completions.create(model="evostream", prompt="copy: a b c d e f", max_tokens=24, temperature=0, stream=True)
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].text for c in chunks)
    rec = completion_of(kafka, chunks[-1].model_extra["evostream"]["trace_id"], since)  # type: ignore[index]
    assert streamed == rec["output_text"] and streamed

    stream = oa.chat.completions.create(
        model="evostream",
        messages=[{"role": "user", "content": "sort: d b c a"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant"
    assert parts[-1].choices == [] and parts[-1].usage is not None  # the usage chunk, asked for
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    rec = completion_of(kafka, parts[-1].model_extra["evostream"]["trace_id"], since)  # type: ignore[index]
    assert text == rec["output_text"] and parts[-1].usage.completion_tokens == rec["token_count"]


def test_the_stream_decodes_a_requests_steps_as_they_come_into_its_answer(kafka: str, deployment: Deployment) -> None:
    """What a stream sends while the service generates: each step of the request's trace (read from evo.steps, as
    the API's tail reads them, out of order too) decoded with the version's tokenizer; the pieces add up to the
    answer, and nothing is left for the Completion to add."""
    since = now_us()
    out = httpx.post(deployment.url + "/infer", json={"prompt": "copy: red green blue", "risk_wait_s": 0}).json()
    steps = find(kafka, STEPS, "GenerationStep", since, lambda r: r["trace_id"] == out["trace_id"])
    assert len(steps) == out["token_count"] > 2
    registry = GovernanceView(kafka, deployment.settings).replayed
    follower = Follower(TokenDecoder(local_resolver(deployment.settings.artifacts_dir, lambda: registry().registry)))
    order = [steps[1], steps[0], *steps[2:]]  # a step may come before the one it follows: it waits for it

    async def follow() -> list[str]:
        return [await follower.step(rec) for rec in order]

    pieces = asyncio.run(follow())
    assert pieces[0] == "" and len([p for p in pieces if p]) >= 2, pieces
    assert "".join(pieces) == out["answer"] and follower.finish({"output_text": out["answer"]}) == ""


def test_a_key_is_needed_and_the_actor_key_is_the_api_key(deployment: Deployment, door: str) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client(door, "sk-not-a-key").completions.create(model="evostream", prompt="copy: x", max_tokens=4)
    assert e.value.status_code == 401 and e.value.body["type"] == "authentication_error"  # type: ignore[index]
    ok = client(door, deployment.admin_token).completions.create(
        model="evostream", prompt="copy: x y", max_tokens=4, temperature=0, user=f"t-{uuid.uuid4().hex[:6]}"
    )
    assert ok.choices[0].text


def test_bad_input_is_an_openai_style_400(deployment: Deployment) -> None:
    oa = client(deployment.url, "sk-no-key-needed")
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="evostream", messages=[{"role": "system", "content": "hi"}])
    assert "user message" in e.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="evostream", prompt="copy: x", max_tokens=0)
    assert e.value.body["param"] == "max_tokens" and e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    r = httpx.post(deployment.url + "/v1/completions", json={"model": "evostream", "prompt": ["a", "b"]})
    assert r.status_code == 400 and "one prompt" in r.json()["error"]["message"]


def test_models_lists_the_service_and_the_production_version(deployment: Deployment) -> None:
    ids = [m.id for m in client(deployment.url, "sk-no-key-needed").models.list()]
    assert ids[0] == "evostream" and deployment.v2 in ids


def refusals_of(kafka: str, tenant: str, since: int) -> list[dict[str, Any]]:
    return find(kafka, ROUTES, "RouteDecision", since, lambda r: r["tenant"] == tenant and r["chosen"] == "refused")


def test_over_its_rate_the_tenant_gets_429_with_retry_after_and_the_refusal_is_on_kafka(
    kafka: str, deployment: Deployment, door: str
) -> None:
    since = now_us()
    oa = client(door, deployment.admin_token)
    oa.completions.create(model="evostream", prompt="copy: p q", max_tokens=4, temperature=0.5, user="limited")
    with pytest.raises(openai.RateLimitError) as e:
        oa.completions.create(model="evostream", prompt="copy: p q", max_tokens=4, temperature=0.5, user="limited")
    assert e.value.status_code == 429
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 100
    assert e.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    # /infer passes the same door
    r = httpx.post(
        door + "/infer",
        json={"prompt": "copy: p q", "user": "limited"},
        headers={"Authorization": f"Bearer {deployment.admin_token}"},
    )
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    (first, second) = sorted(refusals_of(kafka, "limited", since), key=lambda d: d["decided_at_us"])
    assert first["stage"] == "ADMISSION" and first["trace_id"] == "" and first["retry_after_s"] > 0
    assert "requests_per_s" in first["reason"] and second["request_id"] != first["request_id"]


def test_a_key_that_is_no_admin_cannot_pick_its_tenant_by_user(kafka: str, deployment: Deployment, door: str) -> None:
    """A keyed caller is its own tenant: naming another tenant in ``user`` would let a key spread its requests over
    tenants and never meet a limit (on the first version it could: its second request was refused as 'capped')."""
    since = now_us()
    oa = client(door, deployment.alice_token)
    for _ in range(2):  # "capped" allows one request per 100 s: alice, who has no limits, is not capped
        oa.completions.create(model="evostream", prompt="copy: k l", max_tokens=4, temperature=0.5, user="capped")
    decided = find(kafka, ROUTES, "RouteDecision", since, lambda r: r["tenant"] == "capped", timeout_s=3)
    assert not decided, decided


def test_a_spent_budget_is_refused_until_utc_midnight(kafka: str, deployment: Deployment, door: str) -> None:
    since = now_us()
    oa = client(door, deployment.admin_token)
    oa.completions.create(model="evostream", prompt="copy: s t", max_tokens=4, temperature=0, user="thrifty")
    with pytest.raises(openai.RateLimitError) as e:
        oa.completions.create(model="evostream", prompt="copy: u v", max_tokens=4, temperature=0, user="thrifty")
    midnight = 86_400 - int(time.time()) % 86_400
    assert abs(int(e.value.response.headers["retry-after"]) - midnight) <= 5
    assert e.value.body["code"] == "insufficient_quota"  # type: ignore[index]
    (refusal,) = refusals_of(kafka, "thrifty", since)
    assert "tokens_per_day" in refusal["reason"]


def test_the_cache_serves_a_repeated_prompt_as_a_cached_completion(
    kafka: str, deployment: Deployment, door: str
) -> None:
    since = now_us()
    tenant = f"cache-{uuid.uuid4().hex[:6]}"
    oa = client(door, deployment.admin_token)

    def ask(prompt: str, **kw: Any) -> dict[str, Any]:
        out = oa.completions.create(model="evostream", prompt=prompt, max_tokens=8, user=tenant, **kw)
        return {"text": out.choices[0].text, **out.model_extra["evostream"]}  # type: ignore[dict-item]

    first = ask("copy: sun moon", temperature=0)
    again = ask("  copy:  sun moon ", temperature=0)  # an exact repeat, once normalised
    near = ask("copy: sun moon.", temperature=0)  # not exact; the same letters and digits, a cosine over 0.95
    cased = ask("Copy: sun moon", temperature=0)  # MiniLM is uncased (cosine 1), but its letters are not the same
    sampled = ask("copy: sun moon", temperature=0.7, seed=1)
    other = oa.completions.create(model="evostream", prompt="copy: sun moon", max_tokens=8, temperature=0, user="x1")
    assert not first["cached"] and not sampled["cached"] and not cased["cached"]
    assert not other.model_extra["evostream"]["cached"]  # type: ignore[index]  # another tenant's cache
    for hit in (again, near):
        assert hit["cached"] and hit["cached_from"] == first["trace_id"] and hit["text"] == first["text"]
        assert hit["trace_id"] != first["trace_id"] and hit["cost_usd"] == 0.0
        rec = completion_of(kafka, hit["trace_id"], since)
        assert rec["cached"] and rec["cached_from"] == first["trace_id"] and rec["output_text"] == first["text"]
        assert rec["tenant"] == tenant and rec["cost_usd"] == 0.0
    decisions = find(kafka, ROUTES, "RouteDecision", since, lambda r: r["tenant"] == tenant)
    decisions.sort(key=lambda d: d["decided_at_us"])  # keyed by request: on partitions of their own
    assert [d["chosen"] for d in decisions] == ["cache", "cache"]
    assert "exact repeat" in decisions[0]["reason"] and decisions[0]["risk"] == 1.0
    assert "near repeat" in decisions[1]["reason"] and decisions[1]["risk"] >= 0.95
    assert all(d["stage"] == "ADMISSION" and d["chosen_version"] == deployment.v2 for d in decisions)
    streamed = list(
        oa.completions.create(
            model="evostream", prompt="copy: sun moon", max_tokens=8, temperature=0, user=tenant, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == first["text"]
    assert streamed[-1].model_extra["evostream"]["cached"]  # type: ignore[index]


def test_a_bad_limits_file_stops_the_api_with_its_reason(kafka: str, deployment: Deployment, tmp_path: Path) -> None:
    from evostream.api.app import create_app
    from evostream.routing.budget import LimitsError

    bad = tmp_path / "limits.json"
    bad.write_text('{"acme": {"requests_per_s": -1}}')
    settings = deployment.settings.model_copy(update={"tenant_limits": bad})
    with pytest.raises(LimitsError, match=r"limits.json: tenant 'acme': requests_per_s"):
        create_app(ApiConfig(kafka, settings, allowed_hosts=HOSTS), tail=False)
