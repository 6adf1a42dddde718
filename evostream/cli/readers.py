"""``evostream alerts``, ``drift`` and ``profile``: the processors' output topics, read for people."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.bus.reader import TopicReader
from evostream.core.settings import load_settings
from evostream.schemas.catalog import ALERTS, DRIFT, PROFILES
from evostream.views.recent import SEVERITIES, Recent, at_least
from evostream.views.token_text import TokenDecoder, local_resolver


def format_alert(a: Mapping[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(a["produced_at_us"] / 1e6, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    layers = f" layers {','.join(map(str, a['blamed_layers']))}" if a["blamed_layers"] else ""
    return (
        f"{when} {a['severity']:8} {a['stage']:5} score {a['score']:.2f} trace {a['trace_id'][:12]} "
        f"{a['model_version']} [{', '.join(a['flags'])}]{layers}: {a.get('reason', '')}"
    )


def follow_alerts(
    bootstrap: str, min_severity: str = "WARNING", follow: bool = True, from_start: bool = False, idle_s: float = 2.0
) -> Iterator[str]:
    """Lines for alerts at or above ``min_severity``; without ``follow``, stops once the topic is idle."""
    with TopicReader(
        bootstrap,
        ALERTS,
        "RiskAlert",
        start="earliest" if from_start else "latest",
        idle_s=None if follow else idle_s,
        batch=500,
        name="alerts",
    ) as reader:
        for a in reader:
            if at_least(a, min_severity):
                yield format_alert(a)


def format_drift(r: Mapping[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(r["window_end_us"] / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    stats = "  ".join(f"{s['name']}={s['value']:.4g}{'!' if s['fired'] else ''}" for s in r["statistics"])
    verdict = "DRIFT" if r["fired"] else "ok   "
    return f"{when} {r['model_version']} n={r['sample_count']:<4} {verdict} {stats}"


def _read_into(recent: Recent, bootstrap: str, topic: str, schema: str) -> Recent:
    """One pass over ``topic`` into the fold the HTTP API keeps live: both select from it the same way."""
    with TopicReader(bootstrap, topic, schema) as reader:
        for r in reader:
            recent.add(topic, r)
    return recent


def latest_drift(bootstrap: str, last: int = 10, model: str | None = None) -> list[str]:
    """The last ``last`` drift windows (of ``model``, or of every model), oldest first."""
    recent = _read_into(Recent(max_records=100_000), bootstrap, DRIFT, "DriftReport")
    return [format_drift(r) for r in recent.drift(last, model)]


def format_profile(p: Mapping[str, Any], tokens: TokenDecoder | None = None) -> str:
    """A profiling window for people; its token paths as text when ``tokens`` finds the version's tokenizer."""
    start = dt.datetime.fromtimestamp(p["window_start_us"] / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"{p['model_version']}  window from {start}: {p['step_count']} steps, {p['trace_count']} traces"]
    for layer, row in enumerate(p["head_utilization"]):
        freq = p["layer_frequency"][layer] if layer < len(p["layer_frequency"]) else float("nan")
        dormant = [h for h, u in enumerate(row) if u < 0.05]
        cells = " ".join(f"{u:4.2f}" for u in row)
        lines.append(
            f"  layer {layer:2d}  heads [{cells}]  active {freq:4.0%}"
            + (f"  dormant heads {dormant}" if dormant else "")
        )
    if p["dormant_neuron_fraction"]:
        lines.append("  dormant FFN neurons per layer: " + " ".join(f"{x:.0%}" for x in p["dormant_neuron_fraction"]))
    version = str(p["model_version"])

    def shown(ids: list[int]) -> str:
        return tokens.path_text(version, ids) if tokens else str(ids)

    paths = ", ".join(f"{shown(path['token_ids'])} x{path['count']}" for path in p["top_token_paths"][:5])
    lines.append(f"  top token paths: {paths}")
    return "\n".join(lines)


def latest_profiles(bootstrap: str, model: str | None = None, tokens: TokenDecoder | None = None) -> list[str]:
    """The latest ProfileSnapshot of each model version (or of ``model``)."""
    recent = _read_into(Recent(), bootstrap, PROFILES, "ProfileSnapshot")
    return [format_profile(r, tokens) for r in recent.profiles(model)]


@friendly
def alerts(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new alerts until Ctrl-C.")] = False,
    min_severity: Annotated[str, typer.Option(help="INFO, WARNING or CRITICAL.")] = "WARNING",
    since_start: Annotated[bool, typer.Option("--from-start", help="Read the topic from its beginning.")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Print risk alerts from evo.alerts (one line each); --follow subscribes."""
    if min_severity.upper() not in SEVERITIES:
        raise typer.BadParameter("--min-severity must be INFO, WARNING or CRITICAL")
    server = broker(load_settings(bootstrap_servers=bootstrap))
    for line in follow_alerts(server, min_severity.upper(), follow=follow, from_start=since_start):
        typer.echo(line)


@friendly
def drift(
    last: Annotated[int, typer.Option(help="How many windows.")] = 10,
    model: Annotated[str | None, typer.Option(help="Only this model version.")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Show the latest drift windows from evo.drift: each statistic, '!' where it fired, and the verdict."""
    server = broker(load_settings(bootstrap_servers=bootstrap))
    lines = latest_drift(server, last, model)
    for line in lines:
        typer.echo(line)
    if not lines:
        say("no drift windows yet (a model needs its reference window, then a full window of completions)")


@friendly
def profile(
    model: Annotated[str | None, typer.Option(help="Only this model version.")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Show the latest profiling window of each model: head utilization, layer activity, dormant units, token paths
    (as text, with the version's tokenizer where this machine has it)."""
    from evostream.consumers.governance.log import GovernanceLog
    from evostream.consumers.governance.projection import replay
    from evostream.stream_processors.profiling.window import ProfilePolicy

    settings = load_settings(bootstrap_servers=bootstrap)
    server = broker(settings)
    registry = lambda: replay(GovernanceLog(server, topic=settings.governance_topic).items())[0]  # noqa: E731
    shown = latest_profiles(server, model, TokenDecoder(local_resolver(settings.artifacts_dir, registry)))
    for text in shown:
        typer.echo(text)
    if not shown:
        w, grace = settings.profile_window_s, ProfilePolicy(window_s=settings.profile_window_s).grace_s
        say(f"no profiles yet (a window is published once it closes: {w} s of event time, or idle for {w + grace} s)")
