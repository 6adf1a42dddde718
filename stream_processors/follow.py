"""Reading the processors' output topics for people: one line per alert."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from evostream.bus.consumer import EventConsumer
from schemas.catalog import ALERTS, DRIFT, PROFILES
from schemas.codec import RecordCodec

SEVERITIES = ("INFO", "WARNING", "CRITICAL")


def format_alert(a: Mapping[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(a["produced_at_us"] / 1e6, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    layers = f" layers {','.join(map(str, a['blamed_layers']))}" if a["blamed_layers"] else ""
    return (f"{when} {a['severity']:8} {a['stage']:5} score {a['score']:.2f} trace {a['trace_id'][:12]} "
            f"{a['model_version']} [{', '.join(a['flags'])}]{layers}: {a.get('reason', '')}")  # fmt: skip


def follow_alerts(
    bootstrap: str, min_severity: str = "WARNING", follow: bool = True, from_start: bool = False, idle_s: float = 2.0
) -> Iterator[str]:
    """Lines for alerts at or above ``min_severity``; without ``follow``, stops once the topic is idle."""
    floor = SEVERITIES.index(min_severity)
    codec = RecordCodec("RiskAlert")
    config = {"auto.offset.reset": "earliest" if from_start else "latest", "enable.auto.commit": False}
    with EventConsumer(bootstrap, f"evostream-alerts-{uuid.uuid4().hex[:8]}", [ALERTS], config) as consumer:
        idle = 0.0
        while follow or idle < idle_s:
            msgs = consumer.poll_batch(500, 0.5)
            idle = 0.0 if msgs else idle + 0.5
            for m in msgs:
                a = codec.decode_or_skip(m.value())
                if a is not None and SEVERITIES.index(a["severity"]) >= floor:
                    yield format_alert(a)


def format_drift(r: Mapping[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(r["window_end_us"] / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    stats = "  ".join(f"{s['name']}={s['value']:.4g}{'!' if s['fired'] else ''}" for s in r["statistics"])
    verdict = "DRIFT" if r["fired"] else "ok   "
    return f"{when} {r['model_version']} n={r['sample_count']:<4} {verdict} {stats}"


def read_topic(bootstrap: str, topic: str, schema: str, idle_s: float = 2.0) -> Iterator[dict[str, Any]]:
    """Every record of ``topic`` from its start, decoded, until nothing new has come for ``idle_s``."""
    codec = RecordCodec(schema)
    config = {"auto.offset.reset": "earliest", "enable.auto.commit": False}
    with EventConsumer(bootstrap, f"evostream-read-{uuid.uuid4().hex[:8]}", [topic], config) as consumer:
        idle = 0.0
        while idle < idle_s:
            msgs = consumer.poll_batch(1000, 0.5)
            idle = 0.0 if msgs else idle + 0.5
            for m in msgs:
                rec = codec.decode_or_skip(m.value())
                if rec is not None:
                    yield rec


def latest_drift(bootstrap: str, last: int = 10, model: str | None = None) -> list[str]:
    """The last ``last`` drift windows (of ``model``, or of every model), oldest first."""
    out = [r for r in read_topic(bootstrap, DRIFT, "DriftReport") if model is None or r["model_version"] == model]
    return [format_drift(r) for r in out[-last:]]


def format_profile(p: Mapping[str, Any]) -> str:
    start = dt.datetime.fromtimestamp(p["window_start_us"] / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"{p['model_version']}  window from {start}: {p['step_count']} steps, {p['trace_count']} traces"]
    for layer, row in enumerate(p["head_utilization"]):
        freq = p["layer_frequency"][layer] if layer < len(p["layer_frequency"]) else float("nan")
        dormant = [h for h, u in enumerate(row) if u < 0.05]
        cells = " ".join(f"{u:4.2f}" for u in row)
        lines.append(f"  layer {layer:2d}  heads [{cells}]  active {freq:4.0%}" + (f"  dormant heads {dormant}"
                                                                                 if dormant else ""))  # fmt: skip
    if p["dormant_neuron_fraction"]:
        lines.append("  dormant FFN neurons per layer: " + " ".join(f"{x:.0%}" for x in p["dormant_neuron_fraction"]))
    paths = ", ".join(f"{path['token_ids']}x{path['count']}" for path in p["top_token_paths"][:5])
    lines.append(f"  top token paths: {paths}")
    return "\n".join(lines)


def latest_profiles(bootstrap: str, model: str | None = None) -> list[str]:
    """The latest ProfileSnapshot of each model version (or of ``model``)."""
    latest = {r["model_version"]: r for r in read_topic(bootstrap, PROFILES, "ProfileSnapshot")
              if model is None or r["model_version"] == model}  # fmt: skip
    return [format_profile(r) for r in latest.values()]
