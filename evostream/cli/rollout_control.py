"""``evostream rollout control``: the rollout controller as a daemon; ``evostream compare V1 V2``: two versions side by
side over the same window (shadow agreement, alert rates, accuracies, latencies, and the gates' verdicts at the
default plan). ``compare --json`` is what ``rollout start --evidence`` and ``approve --evidence`` cite.

``control`` is registered on ``rollout.rollout_app`` by ``evostream.cli``; ``compare`` is a top-level command."""

from __future__ import annotations

import json
import re
import signal
import threading
from typing import Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.clock import now_us
from evostream.core.errors import EvoError, GovernanceError
from evostream.core.settings import Settings, load_settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_SINCE = "1h"


def _settings(bootstrap: str | None, actor: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["bootstrap_servers"] = bootstrap
    if actor:
        overrides["rollout_actor"] = actor
    return load_settings(**overrides)


def since_us(text: str, now: int) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``1d``) or a time (``2026-11-23T14:03``, UTC
    unless an offset is given) -> µs since the epoch."""
    from evostream.views.governance import parse_time

    m = _DURATION.match(text)
    if m:
        return now - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1_000_000)
    try:
        return parse_time(text)
    except GovernanceError as e:
        raise GovernanceError(f"--since {text!r}: a duration (90s, 30m, 2h, 1d) or a time (2026-11-23T14:03)") from e


@friendly
def control(
    model: Annotated[str | None, typer.Option(help="Registry model name (default: the embedded model's).")] = None,
    tick_s: Annotated[float, typer.Option(min=0.05, help="Seconds between two judgements of the window.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Judge the window once, act on it, and exit.")] = False,
    actor: Annotated[
        str | None, typer.Option(help="The controller's actor (its key signs). Env: EVOSTREAM_ROLLOUT_ACTOR.")
    ] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """The rollout controller: follows MODEL's running rollout on evo.governance, judges its window every tick on
    evo.completions, evo.alerts, evo.outcomes and evo.shadow, and writes RolloutStepped, RolloutAborted (automatic)
    or RolloutCompleted with the window's evidence, signed as its own actor (role controller; enrolled here by the
    local admin when missing). Restart-safe: a restart rebuilds the window from the topics."""
    from evostream.models.default_model import MODEL_ID
    from evostream.wiring.rollout import RolloutController, controller_actor

    settings = _settings(bootstrap, actor)
    server = broker(settings)
    name = model or MODEL_ID
    gov = controller_actor(settings, server, say)
    controller = RolloutController(server, gov, name)
    try:
        if once:
            action = controller.tick()
            typer.echo(action_line(name, action))
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        say(f"rollout control: following the rollouts of {name} as {gov.actor}, a judgement every {tick_s:g} s")
        last: list[str] = []

        def report(action: Any) -> None:
            line = action_line(name, action)
            key = line if action is None or action.kind != "wait" else line.split(";")[0]
            if not last or key != last[0]:  # a line when something changes, not one per tick
                typer.echo(line, nl=True)
                last[:] = [key]

        controller.run(tick_s, stop, report)
    finally:
        controller.close()
        close = getattr(gov.log, "close", None)  # the GovernanceLog's reader (LogT does not promise one)
        if close is not None:
            close()


def action_line(model: str, action: Any) -> str:
    """One line for a tick's action."""
    if action is None:
        return f"{model}: no running rollout"
    what = {"step": f"stepped to step {action.step}", "abort": "ABORTED", "complete": "completed"}.get(action.kind)
    return f"rollout {action.rollout_id} of {model}: {what or 'waiting'}: {action.reason}"


# --- compare -------------------------------------------------------------------------------------------------------
def comparison(server: str, production: str, candidate: str, since: int, until: int) -> dict[str, Any]:
    """Two versions over [since, until): shadow comparisons, both sides' window statistics, and the gates' verdicts
    at the default plan (the production version's answers against the candidate's answers and shadow answers)."""
    from evostream.core.bus.admin import ensure_topics
    from evostream.rollout.gates import judge
    from evostream.rollout.plan import RolloutPlan
    from evostream.schemas.catalog import CATALOG
    from evostream.views.rollout import CANDIDATE_ROLES, INCUMBENT_ROLES, TOPICS, read_fold

    ensure_topics(server, [t for t in CATALOG if t.name in TOPICS])
    fold = read_fold(server, since)
    plan = RolloutPlan()
    prod = fold.stats(production, since, until, INCUMBENT_ROLES)
    cand = fold.stats(candidate, since, until, CANDIDATE_ROLES)
    j = judge(
        cand,
        prod,
        tolerances={name: g.tolerance for name, g in plan.gates.items()},
        confidence=plan.confidence,
        min_samples=plan.min_samples,
        age_s=(until - since) / 1e6,
        window_s=plan.step_s,
    )
    return {
        "kind": "compare",
        "production": production,
        "candidate": candidate,
        "since_us": since,
        "until_us": until,
        "shadow": fold.shadow(production, candidate, since, until),
        "production_stats": prod.doc(),
        "candidate_stats": cand.doc(),
        "verdict": str(j.verdict),
        "reason": j.reason,
        "gates": j.gates,
        "plan": plan.to_json(),
    }


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ms(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def compare_lines(doc: dict[str, Any]) -> list[str]:
    """``comparison`` for people."""
    from evostream.views.governance import when

    p, c, s = doc["production_stats"], doc["candidate_stats"], doc["shadow"]
    rows = [
        ("answers", str(p["answers"]), str(c["answers"])),
        ("alert rate", _pct(p["alert_rate"]), _pct(c["alert_rate"])),
        ("error rate", _pct(p["error_rate"]), _pct(c["error_rate"])),
        ("accuracy", f"{_pct(p['accuracy'])} of {p['labelled']}", f"{_pct(c['accuracy'])} of {c['labelled']}"),
        ("p50 ms", _ms(p["p50_ms"]), _ms(c["p50_ms"])),
        ("p95 ms", _ms(p["p95_ms"]), _ms(c["p95_ms"])),
    ]
    width = max(len(doc["production"]), len(doc["candidate"]), 16)
    lines = [
        f"{doc['production']} (production) against {doc['candidate']} (candidate), "
        f"{when(doc['since_us'])} .. {when(doc['until_us'])} UTC",
        f"shadow: {s['comparisons']} comparisons, agreement {_pct(s['agreement_rate'])}, errors "
        f"{s['production_errors']} / {s['candidate_errors']}, p95 {_ms(s['production_p95_ms'])} / "
        f"{_ms(s['candidate_p95_ms'])} ms",
        f"{'':<12} {doc['production']:<{width}} {doc['candidate']}",
        *(f"{name:<12} {a:<{width}} {b}" for name, a, b in rows),
        f"gates at the default plan (confidence {doc['plan']['confidence']:g}):",
    ]
    for name, g in sorted(doc["gates"].items()):
        p_value = "-" if g["p_value"] is None else f"{g['p_value']:.3g}"
        note = f" ({g['note']})" if g.get("note") else ""
        lines.append(f"  {name:<12} {g['verdict']:<6} p={p_value:<8} tolerance {g['tolerance']:.0%}{note}")
    lines.append(f"verdict: {doc['verdict']}: {doc['reason']}")
    return lines


@friendly
def compare(
    production: Annotated[str, typer.Argument(help="V1: the production (incumbent) version.")],
    candidate: Annotated[str, typer.Argument(help="V2: the candidate (staged or canary) version.")],
    since: Annotated[
        str, typer.Option(help="From: a duration back from now (90s, 30m, 2h, 1d) or a time (UTC unless given).")
    ] = DEFAULT_SINCE,
    as_json: Annotated[bool, typer.Option("--json", help="The comparison as JSON (what --evidence cites).")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Two versions side by side over the same window: shadow agreement, alert rates, error rates, accuracies on
    labelled outcomes, p50/p95 generation times, and each gate's verdict at the default rollout plan."""
    settings = _settings(bootstrap)
    server = broker(settings)
    until = now_us()
    start = since_us(since, until)
    if start >= until:
        raise EvoError(f"--since {since!r} is not in the past")
    doc = comparison(server, production, candidate, start, until)
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    if doc["production_stats"]["answers"] == 0 and doc["candidate_stats"]["answers"] == 0:
        say(f"no answers of {production} or {candidate} since {since}")
    for line in compare_lines(doc):
        typer.echo(line)
