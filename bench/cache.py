"""The response cache through the API: how fast a cache hit answers, exact and near repeats, against a miss.

Real parts only: a broker (``--bootstrap``, the running local stack, or a private one), one ``evostream serve`` of the
default model, and ``evostream api``'s app served by uvicorn as ``evostream api`` serves it, in a process of its own
(``--serve-api``: the app with a per-client quota high enough for a benchmark; the cache's settings are the
defaults but its similarity, 0.95 so that near repeats serve (the default, 1, serves exact repeats only);
``EVOSTREAM_CACHE_*`` change them). The client is an ``httpx`` client on one keep-alive connection, one
request at a time, to ``POST /v1/completions`` (``temperature`` 0, a tenant per rep).

Per rep, over ``--prompts`` held-out suite prompts: each sent once (a miss: published, generated, answered), then
each again (an exact repeat: one dict read), then each with a full stop after it (a near repeat: not exact, so the
prompt is embedded with MiniLM and compared with the tenant's earlier prompts: the same letters and digits, and a
cosine above ``NEAR_SIMILARITY`` for the held-out prompts). Every hit is checked: marked cached, from the miss's
trace, with the miss's text. Latency is client-side, from the send to the whole answer read. Over ``--reps`` reps:
p50 and p90 of each kind, min / median / max. A near hit pays what an exact hit does not: one MiniLM forward of the
prompt (and one matrix-vector product over the tenant's entries).

Run: python -m bench.cache [--prompts 100] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.broker import bench_broker
from bench.procs import stop
from bench.serving import start_servers
from bench.stats import pct, spread
from evostream.models.suite.evaluate import eval_set

KINDS = ("miss", "exact hit", "near hit")
NEAR_SIMILARITY = 0.95
"""The cache's similarity in the benchmark (unless ``EVOSTREAM_CACHE_SIMILARITY`` says): near repeats serve."""


def serve_api(bootstrap: str, port: int) -> None:
    """``evostream api``'s app on ``port`` (this process, until killed), its per-client quota out of the way."""
    import uvicorn

    from evostream.api.app import create_app
    from evostream.api.config import ApiConfig
    from evostream.api.server import server_config
    from evostream.core.settings import load_settings

    similarity = None if os.environ.get("EVOSTREAM_CACHE_SIMILARITY") else NEAR_SIMILARITY
    settings = load_settings(bootstrap_servers=bootstrap, cache_similarity=similarity)
    cfg = ApiConfig(bootstrap, settings, trust_loopback=True, infer_per_s=10_000.0, infer_in_flight=64)
    uvicorn.Server(server_config(create_app(cfg), "127.0.0.1", port, log_level="warning")).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(bootstrap: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Path, str]:
    port = free_port()
    log = tmp / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.cache", "--serve-api", str(port), "--bootstrap", bootstrap],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code in (200, 503):
                return proc, log, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the API did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)


def ask(http: httpx.Client, prompt: str, tenant: str) -> tuple[float, dict[str, Any]]:
    body = {"model": "evostream", "prompt": prompt, "max_tokens": 32, "temperature": 0, "user": tenant}
    t0 = time.perf_counter()
    r = http.post("/v1/completions", json=body)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise SystemExit(f"{r.status_code}: {r.text[:500]}")
    return ms, r.json()


def same(prompt: str) -> str:
    return prompt


def near(prompt: str) -> str:
    """Not an exact repeat, with the same letters and digits: a near repeat when its cosine reaches the similarity."""
    return prompt + "."


def rep(http: httpx.Client, prompts: list[str]) -> dict[str, list[float]]:
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    first: dict[str, dict[str, Any]] = {}
    for p in prompts:
        ms, doc = ask(http, p, tenant)
        if doc["evostream"]["cached"]:
            raise SystemExit(f"a first ask was served from the cache: {p!r}")
        out["miss"].append(ms)
        first[p] = doc
    for kind, variant in (("exact hit", same), ("near hit", near)):
        for p in prompts:
            ms, doc = ask(http, variant(p), tenant)
            info, earlier = doc["evostream"], first[p]
            if not info["cached"] or info["cached_from"] != earlier["evostream"]["trace_id"]:
                raise SystemExit(f"{kind}: {variant(p)!r} was not served from its miss's trace: {info}")
            if doc["choices"][0]["text"] != earlier["choices"][0]["text"]:
                raise SystemExit(f"{kind}: {variant(p)!r} answered another text")
            out[kind].append(ms)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--serve-api", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_api is not None:
        serve_api(args.bootstrap, args.serve_api)
        return
    tasks = len({e.task for e in eval_set(per_task=1)})
    examples = eval_set(per_task=-(-args.prompts // tasks))
    prompts = list(dict.fromkeys(e.prompt for e in examples))[: args.prompts]
    if {near(p) for p in prompts} & set(prompts):
        raise SystemExit("a near variant is another prompt of the set")
    with bench_broker(args.bootstrap) as bootstrap:
        tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-cache-"))
        servers = start_servers(bootstrap, 1, 8, "static", tmp)
        proc, log, url = start_api(bootstrap, tmp)
        try:
            with httpx.Client(base_url=url, timeout=120) as http:
                ask(http, "copy: warm", "warm-up")  # the client's reader, the tokenizer, MiniLM: loaded once
                ask(http, "copy: warm.", "warm-up")
                runs = [rep(http, prompts) for _ in range(args.reps)]
        finally:
            stop(proc, log, "the API")
            for s in servers:
                s.stop()
    print(f"{len(prompts)} prompts x {args.reps} reps, one request at a time, POST /v1/completions")
    print("| request | latency p50 | latency p90 |")
    print("| --- | --- | --- |")
    for kind in KINDS:
        p50 = [pct(r[kind], 50) for r in runs]
        p90 = [pct(r[kind], 90) for r in runs]
        print(f"| {kind} | {spread(p50, '.2f')} ms | {spread(p90, '.2f')} ms |")


if __name__ == "__main__":
    main()
