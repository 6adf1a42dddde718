"""The ``evostream`` command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, ParamSpec, TypeVar

import typer

from evostream.errors import EvoError
from evostream.settings import load_settings

app = typer.Typer(help="evostream: watch, profile, evolve and govern language models on Apache Kafka.",
                  no_args_is_help=True, pretty_exceptions_enable=False)  # fmt: skip
stack_app = typer.Typer(help="The local single-node Kafka broker.", no_args_is_help=True)
schemas_app = typer.Typer(help="The Avro contract.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(schemas_app, name="schemas")

P = ParamSpec("P")
R = TypeVar("R")


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn evostream's own errors into one clear message and exit code 1, not a traceback."""

    @wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EvoError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            sys.exit(1)

    return run


Port = Annotated[int | None, typer.Option(help="Broker port (0 = a free one). Env: EVOSTREAM_BROKER_PORT.")]
CtlPort = Annotated[int | None, typer.Option(help="Controller port (0 = a free one). Env: EVOSTREAM_CONTROLLER_PORT.")]
Bootstrap = Annotated[str | None, typer.Option(help="Kafka bootstrap servers. Env: EVOSTREAM_BOOTSTRAP_SERVERS.")]


def _broker(bootstrap: str | None) -> str:
    """The broker address (the flag, else the environment, else the local stack), once it answers."""
    from evostream.bus.admin import wait_for_broker
    from evostream.stack import resolve_bootstrap

    settings = load_settings(bootstrap_servers=bootstrap)
    server = resolve_bootstrap(settings)
    wait_for_broker(server, settings.connect_timeout_s)
    return server


@stack_app.command("up")
@friendly
def stack_up(port: Port = None, controller_port: CtlPort = None,
             heap: Annotated[str | None, typer.Option(help="Broker JVM heap, e.g. 1g.")] = None) -> None:  # fmt: skip
    """Start the local broker (or reuse the running one) and create every catalog topic."""
    from evostream.stack import LocalStack

    state = LocalStack(load_settings(broker_port=port, controller_port=controller_port, broker_heap=heap)).up(_say)
    typer.echo(state.bootstrap)


@stack_app.command("status")
@friendly
def stack_status() -> None:
    """Say whether the local broker runs, where, and which topics it has."""
    from evostream.stack import LocalStack

    st = LocalStack(load_settings()).status()
    if st.state is None:
        typer.echo("stopped")
        raise typer.Exit(3)
    typer.echo(f"{st.detail}: pid {st.state.pid}, bootstrap {st.state.bootstrap}, Kafka {st.state.kafka_version}")
    for t in st.topics:
        typer.echo(f"  {t}")
    if not st.running:
        raise typer.Exit(1)


@stack_app.command("down")
@friendly
def stack_down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a controlled shutdown.")] = 30.0,
) -> None:
    """Stop the local broker: controlled shutdown, then the process is gone."""
    from evostream.stack import LocalStack

    LocalStack(load_settings()).down(timeout, _say)


@stack_app.command("logs")
@friendly
def stack_logs(lines: Annotated[int, typer.Option("-n", help="How many lines.")] = 40) -> None:
    """Print the tail of the local broker's logs."""
    from evostream.stack import LocalStack

    typer.echo(LocalStack(load_settings()).log_tail(lines))


@app.command()
@friendly
def selfcheck(count: Annotated[int, typer.Option(help="Records to send and read back.")] = 10_000,
              bootstrap: Bootstrap = None) -> None:  # fmt: skip
    """Produce GenerationStep records to the broker, consume them back and check every one is equal."""
    from evostream.selfcheck import round_trip
    from evostream.stack import resolve_bootstrap

    settings = load_settings(bootstrap_servers=bootstrap)
    server = resolve_bootstrap(settings)
    rt = round_trip(server, count, connect_timeout_s=settings.connect_timeout_s, progress=_say)
    typer.echo(
        f"round trip OK via {server}: {rt.records} records, {rt.bytes_per_record:.0f} B each; "
        f"produce {rt.produce_rate:,.0f}/s (acks=all, idempotent), consume+decode {rt.consume_rate:,.0f}/s"
    )


@app.command()
@friendly
def demo(
    risk: Annotated[bool, typer.Option(help="Also run the stream processors and show each answer's risk.")] = True,
    bootstrap: Bootstrap = None,
) -> None:
    """Serve the embedded model and answer one prompt per task through Kafka (the README's main job)."""
    import signal
    import subprocess
    from pathlib import Path

    from evostream.demo import run_demo, with_risk

    server = _broker(bootstrap)
    settings = load_settings(bootstrap_servers=bootstrap)
    worker = None
    if risk:  # the processors run as users run them: `evostream process`, beside the service
        log = settings.processors_dir / "demo-worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            worker = subprocess.Popen([str(Path(sys.executable).with_name("evostream")), "process",
                                       "--bootstrap", server], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        _say(f"stream processors started (pid {worker.pid}, log {log})")
    try:
        answers = run_demo(server, _say)
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
        verdict = (f" · risk {r['score']:.2f} {','.join(r['flags']) or 'no flags'}" if r else
                   " · risk not reported" if risk else "")  # fmt: skip
        typer.echo(f"{'ok ' if ok else 'BAD'} {a.prompt!r:34} -> {a.answer!r:14} trace {a.trace_id} "
                   f"{a.tokens} tokens, {a.step_events} step events, {a.total_ms:.0f} ms{verdict}")  # fmt: skip
    typer.echo(f"{right}/{len(answers)} tasks answered right; every token has its GenerationStep on evo.steps"
               if all(a.step_events == a.tokens for a in answers) else "step events are missing!")  # fmt: skip
    if not all(a.step_events == a.tokens for a in answers):
        raise typer.Exit(1)


@app.command()
@friendly
def serve(
    model: Annotated[
        str, typer.Option(help="'default' (the embedded model), a local folder, or a cached HF id.")
    ] = "default",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    max_batch: Annotated[int, typer.Option(help="Requests generated together.")] = 8,
    max_wait_ms: Annotated[int, typer.Option(help="How long to wait to fill a batch.")] = 5,
    attention: Annotated[
        str, typer.Option(help="Per-head signal: auto, entropy (eager attention), output_norm.")
    ] = "auto",
    embed: Annotated[bool, typer.Option(help="Compute the 384-d MiniLM prompt embedding.")] = True,
    bootstrap: Bootstrap = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve inference requests from evo.requests, emitting a GenerationStep per token and a Completion per request."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from producers.embedding import PromptEmbedder
    from producers.generate import InstrumentedGenerator
    from producers.loading import load_model
    from producers.service import InferenceService, ServeOptions

    server = _broker(bootstrap)
    if attention not in ("auto", "entropy", "output_norm"):
        raise typer.BadParameter("--attention must be auto, entropy or output_norm")
    loaded = load_model(model, device=device, attn_implementation="eager" if attention == "entropy" else None)
    signal = None if attention == "auto" else ("ENTROPY" if attention == "entropy" else "OUTPUT_NORM")
    options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms)
    generator = InstrumentedGenerator(loaded, signal, options.max_prompt_tokens, options.max_new_tokens_limit)  # type: ignore[arg-type]
    service = InferenceService(server, loaded, PromptEmbedder() if embed else None, options, generator)
    service.install_signal_handlers()
    service.run(
        on_ready=lambda: _say(
            f"serving {loaded.version} ({loaded.parameter_count():,} parameters, {loaded.device}, "
            f"attention signal {generator.signal}) from {server}; Ctrl-C stops after the batch in flight"
        )
    )
    _say(f"stopped after {service.served} requests")


@app.command()
@friendly
def publish(
    prompt: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the Completion and print it.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Upper bound on generated tokens.")] = 64,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 60.0,
    bootstrap: Bootstrap = None,
) -> None:
    """Publish an inference request; with --wait, print the answer, its trace id and how it finished."""
    from producers.client import BadRequestError, InferenceClient, prompt_problem

    problem = prompt_problem(prompt)
    if problem:  # refused before looking for a broker: with none running, the broker error would hide this one
        raise BadRequestError(problem)
    server = _broker(bootstrap)
    client = InferenceClient(server)
    sent = client.publish(prompt, max_new_tokens=max_new_tokens)
    if not wait:
        typer.echo(sent.request_id)
        return
    rec = client.await_reply(sent, timeout)
    if rec["error"]:
        typer.secho(
            f"error: {rec['error']} (request {sent.request_id}, trace {rec['trace_id']})", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1)
    typer.echo(rec["output_text"])
    t = rec["timings"]
    _say(
        f"trace {rec['trace_id']} · {rec['model_version']} · {rec['token_count']} tokens · {rec['finish_reason']} · "
        f"{t['total_us'] / 1000:.1f} ms"
    )


@app.command()
@friendly
def process(
    loglevel: Annotated[str, typer.Option(help="Faust worker log level.")] = "WARNING",
    bootstrap: Bootstrap = None,
) -> None:
    """Run the stream processors (risk scores and alerts) until Ctrl-C; state resumes from changelog topics."""
    from stream_processors.app import run_worker

    server = _broker(bootstrap)
    settings = load_settings(bootstrap_servers=bootstrap)
    settings.processors_dir.mkdir(parents=True, exist_ok=True)
    _say(f"stream processors on {server} (data in {settings.processors_dir})")
    run_worker(settings, server, loglevel)


@app.command()
@friendly
def calibrate(
    model: Annotated[str, typer.Option(help="'default', a local folder, or a cached HF id.")] = "default",
    per_task: Annotated[int, typer.Option(help="Reference prompts per task of the suite.")] = 100,
    out: Annotated[str | None, typer.Option(help="Policy file (default: the shipped policies folder).")] = None,
) -> None:
    """Calibrate the risk policy of a model family from a reference run on the task suite (healthy traffic).

    The hand-set numbers (target rates, margin, weights, loop rules) are kept from the policy file when it exists,
    so edit them there and calibrate again; the code's defaults are used otherwise."""
    from pathlib import Path

    from producers.loading import load_model
    from producers.suite.tasks import make_split
    from stream_processors.reference import calibrate_model, policy_path
    from stream_processors.risk import RiskPolicy, family_of

    loaded = load_model(model)
    path = Path(out) if out else policy_path(family_of(loaded.version))
    base = RiskPolicy.from_json(path.read_text(encoding="utf-8")) if path.exists() else None
    _say(f"hand-set numbers from {path if base else 'the code defaults'}")
    prompts = [e.prompt for e in make_split("calibration", per_task)]
    _say(f"reference run of {loaded.version} on {len(prompts)} prompts")
    policy = calibrate_model(loaded, prompts, progress=lambda d, t: _say(f"  {d}/{t}"), base=base)
    policy.calibration.update(split="calibration", per_task=per_task)  # so benchmarks can keep clear of it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy.to_json() + "\n", encoding="utf-8")
    _say(f"wrote {path} from {policy.calibration['steps']} steps of {policy.calibration['traces']} traces: "
         f"entropy threshold {policy.entropy_bits:.4f} bits, collapse z {policy.collapse_z}, blow-up z "
         f"{policy.blowup_z}, alert score {policy.alert_score}, critical score {policy.critical_score}")  # fmt: skip


@app.command()
@friendly
def alerts(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new alerts until Ctrl-C.")] = False,
    min_severity: Annotated[str, typer.Option(help="INFO, WARNING or CRITICAL.")] = "WARNING",
    since_start: Annotated[bool, typer.Option("--from-start", help="Read the topic from its beginning.")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Print risk alerts from evo.alerts (one line each); --follow subscribes."""
    from stream_processors.follow import follow_alerts

    order = ("INFO", "WARNING", "CRITICAL")
    if min_severity.upper() not in order:
        raise typer.BadParameter("--min-severity must be INFO, WARNING or CRITICAL")
    server = _broker(bootstrap)
    for line in follow_alerts(server, min_severity.upper(), follow=follow, from_start=since_start):
        typer.echo(line)


@app.command()
@friendly
def drift(
    last: Annotated[int, typer.Option(help="How many windows.")] = 10,
    model: Annotated[str | None, typer.Option(help="Only this model version.")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Show the latest drift windows from evo.drift: each statistic, '!' where it fired, and the verdict."""
    from stream_processors.follow import latest_drift

    server = _broker(bootstrap)
    lines = latest_drift(server, last, model)
    for line in lines:
        typer.echo(line)
    if not lines:
        _say("no drift windows yet (a model needs its reference window, then a full window of completions)")


@app.command()
@friendly
def profile(
    model: Annotated[str | None, typer.Option(help="Only this model version.")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Show the latest profiling window of each model: head utilization, layer activity, dormant units, token paths."""
    from stream_processors.follow import latest_profiles
    from stream_processors.profiling import ProfilePolicy

    server = _broker(bootstrap)
    shown = latest_profiles(server, model)
    for text in shown:
        typer.echo(text)
    if not shown:
        w, grace = load_settings().profile_window_s, ProfilePolicy().grace_s
        _say(f"no profiles yet (a window is published once it closes: {w} s of event time, or idle for {w + grace} s)")


@app.command()
@friendly
def topics(
    create: Annotated[
        bool, typer.Option("--create", help="Create the catalog's missing topics on the broker.")
    ] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """List the topic catalog; with --create, create its missing topics on the broker."""
    from schemas.catalog import CATALOG

    if create:
        from evostream.bus.admin import ensure_topics
        from evostream.stack import resolve_bootstrap

        settings = load_settings(bootstrap_servers=bootstrap)
        server = resolve_bootstrap(settings)
        created = ensure_topics(server, CATALOG, timeout_s=settings.ready_timeout_s)
        _say(f"created on {server}: {', '.join(sorted(created)) or 'nothing (all present)'}")
    for t in CATALOG:
        keep = "forever" if t.retention_ms < 0 else f"{t.retention_ms / 86_400_000:g} d"
        typer.echo(f"{t.name:18} key={t.key:14} value={t.value_schema:17} partitions={t.partitions} "
                   f"{t.cleanup_policy:7} {keep:8} {t.doc}")  # fmt: skip


@schemas_app.command("list")
def schemas_list() -> None:
    """Every schema version with its fingerprint."""
    from schemas import default_registry

    for sv in default_registry():
        typer.echo(f"{sv.short_name:18} v{sv.version}  {sv.fingerprint.hex()}  {sv.source}")


@schemas_app.command("check")
def schemas_check() -> None:
    """Check BACKWARD_TRANSITIVE compatibility of every schema version in the repository."""
    from schemas import default_registry
    from schemas.compat import check_backward_transitive

    problems = check_backward_transitive(default_registry())
    for p in problems:
        typer.secho(p, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("all schema versions read every earlier version")


if __name__ == "__main__":
    app()
