"""The main job on the embedded default: serve the default model in-process and answer one prompt per suite task
through Kafka, showing each answer, its trace id, and that evo.steps holds one event per generated token."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.core.errors import EvoError
from evostream.core.settings import Settings, load_settings
from evostream.schemas.catalog import RISK
from evostream.schemas.records import Outcome
from evostream.stream_processors.risk.outcomes import outcome
from evostream.wiring.feedback import publish_outcomes


@dataclass(frozen=True)
class DemoAnswer:
    task: str
    prompt: str
    expected: str
    answer: str
    trace_id: str
    model_version: str
    tokens: int
    step_events: int
    total_ms: float
    risk: dict[str, Any] | None = None
    """The FINAL RiskReport of the trace, when the stream processors ran alongside."""


DEMO_WAIT_MS = 20
"""The demo sends its prompts at once: a wait longer than the service default puts them in one batch."""


def run_demo(
    bootstrap: str, settings: Settings, say: Callable[[str], None], timeout_s: float = 120.0
) -> list[DemoAnswer]:
    # imported here, not at the top: every command imports this module, and only the demo needs torch
    from evostream.models.default_model import MODEL_ID
    from evostream.models.suite.tasks import make_split
    from evostream.producers.client import InferenceClient
    from evostream.producers.embedding import PromptEmbedder
    from evostream.producers.service import InferenceService, ServeOptions
    from evostream.wiring.governed import GovernedModel, ensure_genesis

    # what serves is what governance says: on an empty log, the genesis registers and promotes the embedded model
    version = ensure_genesis(settings, bootstrap, say)
    source = GovernedModel(bootstrap, settings, MODEL_ID)
    loaded = source.current().loaded
    options = ServeOptions(
        max_batch=settings.serve_max_batch,
        max_wait_ms=max(settings.serve_max_wait_ms, DEMO_WAIT_MS),
        block_window_s=settings.step_block_window_ms / 1000,
        block_max_steps=settings.step_block_max_steps,
    )
    service = InferenceService(bootstrap, loaded, PromptEmbedder(), options, models=source)
    ready = threading.Event()
    thread = threading.Thread(target=service.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    if not ready.wait(30):
        source.close()
        raise EvoError("the inference service did not start")
    say(
        f"serving {version}, the governed production version ({loaded.parameter_count():,} parameters, artifact "
        f"verified) on {loaded.device}"
    )
    try:
        examples = {e.task: e for e in make_split("demo", 1)}
        client = InferenceClient(bootstrap, tenant="demo")
        sent = {task: client.publish(e.prompt, max_new_tokens=32) for task, e in examples.items()}
        replies = {task: client.await_reply(s, timeout_s) for task, s in sent.items()}
    finally:
        service.stop_event.set()
        thread.join(60)
        source.close()
    traces = {r["trace_id"] for r in replies.values()}
    steps = client.trace_steps(traces, sum(r["token_count"] for r in replies.values()), timeout_s)
    counts = Counter(s["trace_id"] for s in steps)
    return [
        DemoAnswer(
            task,
            examples[task].prompt,
            examples[task].answer,
            r["output_text"],
            r["trace_id"],
            r["model_version"],
            r["token_count"],
            counts[r["trace_id"]],
            r["timings"]["total_us"] / 1000,
        )
        for task, r in replies.items()
    ]


def final_risk(bootstrap: str, traces: set[str], timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """The FINAL RiskReport of each trace in ``traces`` (those that arrive within ``timeout_s``)."""
    found: dict[str, dict[str, Any]] = {}
    with TopicReader(
        bootstrap, RISK, "RiskReport", idle_s=None, timeout_s=timeout_s, until=lambda: set(found) == traces, name="demo"
    ) as reader:
        for r in reader:
            if r["trace_id"] in traces and r["stage"] == "FINAL":
                found[r["trace_id"]] = r
    return found


def with_risk(bootstrap: str, answers: list[DemoAnswer], timeout_s: float = 60.0) -> list[DemoAnswer]:
    reports = final_risk(bootstrap, {a.trace_id for a in answers}, timeout_s)
    return [replace(a, risk=reports.get(a.trace_id)) for a in answers]


@friendly
def demo(
    risk: Annotated[bool, typer.Option(help="Also run the stream processors and show each answer's risk.")] = True,
    bootstrap: Bootstrap = None,
) -> None:
    """Serve the embedded model and answer one prompt per task through Kafka (the README's main job)."""
    import signal
    import subprocess
    import sys

    settings = load_settings(bootstrap_servers=bootstrap)
    server = broker(settings)
    worker = None
    if risk:  # the processors run as users run them: `evostream process`, beside the service
        log = settings.processors_dir / "demo-worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:  # this interpreter runs the CLI of this checkout, whatever is on PATH
            worker = subprocess.Popen(
                [sys.executable, "-m", "evostream.cli", "process", "--bootstrap", server],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        say(f"stream processors started (pid {worker.pid}, log {log})")
    try:
        answers = run_demo(server, settings, say)
        if worker is not None:
            answers = with_risk(server, answers)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    right = 0
    for a in answers:
        ok = a.answer == a.expected
        right += ok
        r = a.risk
        verdict = (
            f" · risk {r['score']:.2f} {','.join(r['flags']) or 'no flags'}"
            if r
            else " · risk not reported"
            if risk
            else ""
        )
        typer.echo(
            f"{'ok ' if ok else 'BAD'} {a.prompt!r:34} -> {a.answer!r:14} trace {a.trace_id} "
            f"{a.tokens} tokens, {a.step_events} step events, {a.total_ms:.0f} ms{verdict}"
        )
    typer.echo(
        f"{right}/{len(answers)} tasks answered right; every token has its GenerationStep on evo.steps"
        if all(a.step_events == a.tokens for a in answers)
        else "step events are missing!"
    )
    if not all(a.step_events == a.tokens for a in answers):
        raise typer.Exit(1)
    # the suite knows each answer: the log learns whether it was right (evo.outcomes, once per trace)
    publish_outcomes(server, suite_outcomes(answers))
    say(f"{len(answers)} outcomes (source SUITE) recorded on evo.outcomes")


def suite_outcomes(answers: list[DemoAnswer]) -> list[Outcome]:
    """One SUITE label per answer, its id the trace's: a demo run again labels new traces, never the same twice."""
    return [
        outcome(
            a.trace_id,
            a.model_version,
            "RIGHT" if a.answer == a.expected else "WRONG",
            source="SUITE",
            actor="suite",
            recorded_at_us=now_us(),
            note=f"expected {a.expected!r}",
            outcome_id=f"suite-{a.trace_id}",
        )
        for a in answers
    ]
