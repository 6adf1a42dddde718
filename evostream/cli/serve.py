"""``evostream serve``, ``publish`` and ``process``: run the inference service, talk to it, run the processors."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.bus.security import act_as
from evostream.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from evostream.producers.generate import InstrumentedGenerator
    from evostream.producers.routing import Route
    from evostream.routing.policy import Router
    from evostream.routing.prices import PriceTable
    from evostream.wiring.deployment import GovernedDeployment
    from evostream.wiring.governed import GovernedModel
    from evostream.wiring.templates import GovernedTemplates


@friendly
def serve(
    model: Annotated[
        str, typer.Option(help="'default' (the embedded model), a local folder, or a cached HF id.")
    ] = "default",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Requests generated together (default 8). Env: EVOSTREAM_SERVE_MAX_BATCH.")
    ] = None,
    max_wait_ms: Annotated[
        int | None,
        typer.Option(help="How long to wait to fill a batch (default 5). Env: EVOSTREAM_SERVE_MAX_WAIT_MS."),
    ] = None,
    attention: Annotated[
        str, typer.Option(help="Per-head signal: auto, entropy (eager attention), output_norm.")
    ] = "auto",
    embed: Annotated[
        bool,
        typer.Option(help="Compute the 384-d MiniLM prompt embedding (a route's prompt model needs it)."),
    ] = True,
    governed: Annotated[
        str | None,
        typer.Option(
            help="Serve this model name's production version from the governance log, and follow it: a "
            "promotion or a rollback swaps the model between batches (--model is then ignored). Its rollouts are "
            "followed too: the candidate answers its weight's share and the shadow's mirror (static batching). "
            "Requests naming a governed prompt template (`evostream template`) are rendered into its version the "
            "log names."
        ),
    ] = None,
    rollouts: Annotated[
        bool,
        typer.Option(
            "--rollouts/--no-rollouts",
            help="With --governed: serve the running rollout's candidate (or the staging version under the "
            "policy's shadow_share) beside production. --no-rollouts serves production alone.",
        ),
    ] = True,
    batching: Annotated[
        str | None,
        typer.Option(
            help="continuous (greedy requests join and leave the running batch between steps) or static "
            "(each batch runs to completion) (default static). Env: EVOSTREAM_SERVE_BATCHING."
        ),
    ] = None,
    admit_min: Annotated[
        int | None,
        typer.Option(
            help="Continuous batching: admit newcomers once this many slots are free (default: half the batch), "
            "or once the oldest has waited 20 ms. Env: EVOSTREAM_SERVE_ADMIT_MIN."
        ),
    ] = None,
    torch_threads: Annotated[
        int | None,
        typer.Option(
            help="Torch threads on the CPU (default: CPUs - 1, at least 1). Env: EVOSTREAM_SERVE_TORCH_THREADS."
        ),
    ] = None,
    kv_cache: Annotated[
        str,
        typer.Option(
            help="KV cache: dynamic (grows per step), or static (allocated once per batch, decoder-only "
            "models; others fall back to dynamic and say so)."
        ),
    ] = "dynamic",
    route: Annotated[
        str | None,
        typer.Option(
            help="Route every request between the served model (self) and --reference as the governance log's "
            "route/NAME says (its policy and independence level, followed), recording each decision on evo.routes. "
            "Env: EVOSTREAM_ROUTE."
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="The route's reference: governed:<version> (a registered version, loaded beside the self model) or "
            "an OpenAI-compatible base URL http(s)://host:port/v1[#model]. Env: EVOSTREAM_ROUTE_REFERENCE."
        ),
    ] = None,
    route_policy: Annotated[
        Path | None,
        typer.Option(
            help="Serve this routing policy file (a RoutePolicy's JSON; its risk probe is read from the artifact "
            "store) at --route-level instead of following the governance log: for tests and trials, ungoverned (no "
            "evidence, no approval); its decisions carry policy_version file:<sha256>."
        ),
    ] = None,
    route_level: Annotated[
        int | None, typer.Option(help="The independence level of --route-policy served (0 to 4, a gate of the file).")
    ] = None,
    bootstrap: Bootstrap = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve inference requests from evo.requests, emitting a GenerationStep per token and a Completion per request."""
    act_as("inference")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from evostream.models.loading import load_model
    from evostream.producers.embedding import PromptEmbedder
    from evostream.producers.generate import InstrumentedGenerator, KVCache
    from evostream.producers.service import InferenceService, ServeOptions
    from evostream.producers.steps import AttentionSignal

    settings = load_settings(
        bootstrap_servers=bootstrap,
        serve_max_batch=max_batch,
        serve_max_wait_ms=max_wait_ms,
        serve_torch_threads=torch_threads,
        serve_batching=batching,
        serve_admit_min=admit_min,
        route=route,
        route_reference=reference,
    )
    fixed = _check_route_flags(settings, route_policy, route_level, embed)
    follow_rollouts = _check_rollout_flags(settings, governed, rollouts)
    prices = _prices(settings)
    server = broker(settings)
    if attention not in ("auto", "entropy", "output_norm"):
        raise typer.BadParameter("--attention must be auto, entropy or output_norm")
    if kv_cache not in ("dynamic", "static"):
        raise typer.BadParameter("--kv-cache must be dynamic or static")
    attn: Literal["eager"] | None = "eager" if attention == "entropy" else None
    models: GovernedModel | None = None
    deployments: GovernedDeployment | None = None
    templates: GovernedTemplates | None = None
    if governed:
        from evostream.wiring.deployment import GovernedDeployment
        from evostream.wiring.governed import GovernedModel
        from evostream.wiring.templates import GovernedTemplates

        def load(path: Path, _v: str) -> Any:
            return load_model(str(path), device, attn_implementation=attn)

        if follow_rollouts:
            deployments = GovernedDeployment(server, settings, governed, load=load)
            loaded = deployments.current().loaded
        else:
            models = GovernedModel(server, settings, governed, load=load)
            loaded = models.current().loaded
        templates = GovernedTemplates(server, settings)  # requests may name a governed prompt template
    else:
        loaded = load_model(model, device=device, attn_implementation=attn)
    threads = ""
    if loaded.device.type == "cpu":
        import os

        import torch

        # measured by bench.overhead on 2 cores: decoding on both loses to the emitter process and the broker waking
        # beside it (and a small model decodes no faster on two); one less leaves them a core
        # (docs/benchmarks.md#overhead-of-instrumented-generation-cpu)
        n = settings.serve_torch_threads or max(1, (os.cpu_count() or 1) - 1)
        torch.set_num_threads(n)
        threads = f", {n} torch thread{'s' if n > 1 else ''}"
    signal: AttentionSignal | None = (
        None if attention == "auto" else ("ENTROPY" if attention == "entropy" else "OUTPUT_NORM")
    )
    options = ServeOptions(
        max_batch=settings.serve_max_batch,
        max_wait_ms=settings.serve_max_wait_ms,
        batching=settings.serve_batching,
        admit_min=settings.serve_admit_min,
        block_window_s=settings.step_block_window_ms / 1000,
        block_max_steps=settings.step_block_max_steps,
    )
    cache: KVCache = "static" if kv_cache == "static" else "dynamic"
    generator = InstrumentedGenerator(
        loaded,
        signal,
        options.max_prompt_tokens,
        options.max_new_tokens_limit,
        kv_cache=cache,
        sketch_dim=settings.serve_sketch_dim,
    )
    routed, close_route = (
        _route(server, settings, fixed, prices, generator, device, attn, lambda: service.serving.version)
        if settings.route
        else (None, None)
    )
    service = InferenceService(
        server,
        loaded,
        PromptEmbedder() if embed else None,
        options,
        generator,
        models=models,
        route=routed,
        prices=prices,
        templates=templates,
        deployments=deployments,
    )
    service.install_signal_handlers()
    try:
        service.run(
            on_ready=lambda: say(
                f"serving {loaded.version} ({loaded.parameter_count():,} parameters, {loaded.device}{threads}, "
                f"attention signal {generator.signal}, {generator.decode_path} KV cache, "
                f"{options.batching if generator.decode_path == 'dynamic' else 'static'} batching"
                + (f": {generator.decode_path_reason}" if generator.decode_path != kv_cache else "")
                + f") from {server}"
                + (f", following the governance of {governed}" if governed else "")
                + (" and its rollouts" if follow_rollouts else "")
                + (_routing_line(routed, route_level) if routed is not None else "")
                + "; Ctrl-C stops after the batch in flight"
            )
        )
    finally:
        for follower in (models, deployments, templates):
            if follower is not None:
                follower.close()
        if close_route is not None:
            close_route()
    say(f"stopped after {service.served} requests")


def _routing_line(route: Route, fixed_level: int | None) -> str:
    router = route.router()
    if fixed_level is not None and router is not None:
        return (
            f", routing {route.name!r} to {route.reference.version} at level {fixed_level} of a fixed policy "
            f"(ungoverned: {router.policy_version[:17]})"
        )
    if router is None:
        return f", route {route.name!r} to {route.reference.version} has no level approved yet: no routing until one is"
    return (
        f", routing {route.name!r} to {route.reference.version} at level {router.level} "
        f"(policy {router.policy_version[:12]}, following the governance log)"
    )


def _check_rollout_flags(settings: Settings, governed: str | None, rollouts: bool) -> bool:
    """Whether the service follows the governed model's rollouts. A routed service takes no part in rollouts (its
    requests are the router's to place, not a canary's): refused at start rather than a rollout silently ignored."""
    if not governed:
        return False
    if settings.route and rollouts:
        raise typer.BadParameter(
            f"--route {settings.route}: a routed service takes no part in rollouts (its requests are the router's to "
            "place); serve it with --no-rollouts (a rollout of the model then gets no canary answers from it)"
        )
    return rollouts


def _check_route_flags(settings: Settings, policy: Path | None, level: int | None, embed: bool) -> Router | None:
    """The route's flags, checked before anything loads or connects: the fixed policy's router (its file read, its
    level one of the ladder's and a gate of the file, its probe read from the artifact store), or None (none given:
    the governance log's, or no route). A route is refused ``--no-embed`` where prompts are scored on their
    embedding: a fixed policy with a prompt model, or the governance log's (whose policies may have one)."""
    if not settings.route:
        if policy is not None or level is not None or settings.route_reference:
            raise typer.BadParameter("--reference, --route-policy and --route-level need --route NAME")
        return None
    from evostream.producers.targets import parse_reference

    parse_reference(settings.route_reference)  # a bad reference is refused now, with the reason
    if (policy is None) != (level is None):
        raise typer.BadParameter("a fixed policy is served at a level: give both --route-policy FILE --route-level N")
    if settings.serve_batching == "continuous":
        raise typer.BadParameter("a routed service batches statically: --batching static (or leave it unset)")
    if policy is None or level is None:
        if not embed:
            raise typer.BadParameter(
                f"route {settings.route!r} follows the governance log, whose routing policies may score prompts on "
                "their embedding: serve it without --no-embed (or a fixed --route-policy with no prompt model)"
            )
        return None
    router = _fixed_router(settings, policy, level)
    if router.policy.prompt is not None and not embed:
        raise typer.BadParameter(
            f"--route-policy {policy} scores prompts on their embedding (it has a prompt model): serve it without "
            "--no-embed"
        )
    return router


def _prices(settings: Settings) -> PriceTable:
    from evostream.routing.prices import PriceTable

    if settings.route_prices is None:
        return PriceTable()
    try:
        data = settings.route_prices.read_bytes()
    except OSError as e:
        raise typer.BadParameter(f"the price table {settings.route_prices}: {e.strerror or e}") from e
    return PriceTable.from_bytes(data)


def _fixed_router(settings: Settings, path: Path, level: int) -> Router:
    """The router of a policy file at ``level``; its version ``file:<SHA-256 of the file's bytes>`` says on every
    decision that an ungoverned fixed policy made it. Each problem names the file."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.core.errors import EvoError
    from evostream.routing.policy import LADDER, RoutePolicy, Router
    from evostream.wiring.risk import load_probe

    if not 0 <= level < len(LADDER):
        shares = ", ".join(f"{i}: {s:g}" for i, s in enumerate(LADDER))
        raise typer.BadParameter(
            f"--route-level {level} is not an independence level (0 to {len(LADDER) - 1}; target self-shares {shares})"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise typer.BadParameter(f"--route-policy {path}: {e.strerror or e}") from e
    try:
        policy = RoutePolicy.from_bytes(data)
        policy.gate(level)
    except EvoError as e:
        raise typer.BadParameter(f"--route-policy {path}: {e}") from e
    probe = None
    if policy.probe_sha256:
        try:
            probe = load_probe(ArtifactStore(settings.artifacts_dir), policy.probe_sha256)
        except (EvoError, OSError, ValueError) as e:
            raise typer.BadParameter(
                f"--route-policy {path}: its risk probe {policy.probe_sha256} cannot be read from the artifact store "
                f"{settings.artifacts_dir}: {e}"
            ) from e
    return Router(policy, level, probe, policy_version=f"file:{hashlib.sha256(data).hexdigest()}")


def _route(
    server: str,
    settings: Settings,
    fixed: Router | None,
    prices: PriceTable,
    generator: InstrumentedGenerator,
    device: str | None,
    attn: Literal["eager"] | None,
    served: Callable[[], str],
) -> tuple[Route, Callable[[], None]]:
    """The route served: its router (a fixed one, or the governance log's, followed, for the self model version
    ``served`` says the service serves), its reference target (loaded or reached now) and its prices; and what
    closes it."""
    from evostream.models.loading import load_model
    from evostream.producers.generate import InstrumentedGenerator
    from evostream.producers.routing import Route
    from evostream.producers.targets import GovernedTarget, OpenAITarget, ReferenceTarget, parse_reference
    from evostream.wiring.governed import load_governed_version

    spec = parse_reference(settings.route_reference)
    target: ReferenceTarget
    if spec.kind == "governed":
        loaded = load_governed_version(
            server,
            settings,
            spec.version,
            load=lambda path, _v: load_model(str(path), device, attn_implementation=attn),
        )
        target = GovernedTarget(
            loaded,
            InstrumentedGenerator(
                loaded,
                generator.signal,
                generator.max_prompt_tokens,
                generator.max_new_tokens_limit,
                kv_cache=generator.kv_cache,
                sketch_dim=settings.serve_sketch_dim,
            ),
        )
    else:
        target = OpenAITarget(spec.base_url, spec.model, settings.route_timeout_s)
    if fixed is not None:
        return Route(settings.route, lambda: fixed, target, prices), target.close
    from evostream.wiring.routing import GovernedRoute

    governed = GovernedRoute(server, settings, settings.route)

    def close() -> None:
        governed.close()
        target.close()

    return Route(settings.route, lambda: governed.current(served()), target, prices), close


@friendly
def publish(
    prompt: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the Completion and print it.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Upper bound on generated tokens.")] = 64,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 60.0,
    template: Annotated[
        str | None,
        typer.Option(
            help="A governed prompt template, NAME (its production version) or NAME@VERSION: the service renders the "
            "prompt into its {input} slot (a service run with --governed)."
        ),
    ] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Publish an inference request; with --wait, print the answer, its trace id and how it finished."""
    from evostream.producers.client import BadRequestError, InferenceClient, prompt_problem, template_problem

    problem = prompt_problem(prompt) or template_problem(template)
    if problem:  # refused before looking for a broker: with none running, the broker error would hide this one
        raise BadRequestError(problem)
    server = broker(load_settings(bootstrap_servers=bootstrap))
    client = InferenceClient(server)
    sent = client.publish(prompt, max_new_tokens=max_new_tokens, template=template)
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
    rendered = f" · template {rec['template_version']}" if rec.get("template_version") else ""
    say(
        f"trace {rec['trace_id']} · {rec['model_version']}{rendered} · {rec['token_count']} tokens · "
        f"{rec['finish_reason']} · {t['total_us'] / 1000:.1f} ms"
    )


@friendly
def process(
    loglevel: Annotated[str, typer.Option(help="Faust worker log level.")] = "WARNING",
    bootstrap: Bootstrap = None,
) -> None:
    """Run the stream processors (risk scores and alerts) until Ctrl-C; state resumes from changelog topics."""
    act_as("processors")
    from evostream.stream_processors.app import run_worker

    settings = load_settings(bootstrap_servers=bootstrap)
    server = broker(settings)
    settings.processors_dir.mkdir(parents=True, exist_ok=True)
    say(f"stream processors on {server} (data in {settings.processors_dir})")
    run_worker(settings, server, loglevel, on_start=_follow_governed_probes(settings, server))


def _follow_governed_probes(settings: Settings, server: str) -> Callable[[Any], Callable[[], None]]:
    """The processors' risk tracker is offered each family's production probe from the governance log."""

    def start(procs: Any) -> Callable[[], None]:
        from evostream.wiring.risk import GovernedProbes

        probes = GovernedProbes(server, settings, procs.tracker.offer)
        if probes.serving:
            say("learned risk probes: " + ", ".join(f"{f} -> {v}" for f, v in sorted(probes.serving.items())))
        return probes.close

    return start
