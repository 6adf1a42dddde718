"""Evolution cycles against the real broker and a real governance log: `evostream evolve` registers a candidate
with its lineage and measured metrics and proposes it when its validation passes; a deliberately over-pruned
candidate is registered with its failed validation and never reaches staging; the consumer runs a cycle when drift
fires on the production version, and a trigger already handled is not handled twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import pytest

from evostream.consumers.evolution.cycle import CycleConfig
from evostream.consumers.evolution.distill import DistillConfig
from evostream.consumers.evolution.propose import propose
from evostream.consumers.evolution.recipe import Recipe
from evostream.consumers.evolution.service import EvolutionConsumer, Outcome
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.core.settings import Settings, load_settings
from evostream.schemas.catalog import DRIFT
from evostream.schemas.codec import RecordCodec

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "evostream.cli"]
FAST = ["--steps", "10", "--held-out", "4", "--reps", "1"]


@pytest.fixture(scope="module")
def home(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A governance log of its own with the embedded model in production (the genesis `make run` does)."""
    root = tmp_path_factory.mktemp("evolve")
    topic = f"test-evolve-{uuid.uuid4().hex[:8]}"
    env = {
        "EVOSTREAM_GOVERNANCE_DIR": str(root / "gov"),
        "EVOSTREAM_GOVERNANCE_TOPIC": topic,
        "EVOSTREAM_ARTIFACTS_DIR": str(root / "a"),
        "EVOSTREAM_EVOLUTION_DIR": str(root / "evo"),
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "HF_HUB_OFFLINE": "1",
    }
    from evostream.wiring.governed import ensure_genesis

    ensure_genesis(settings_of(env), kafka, lambda _: None)
    return env


def settings_of(env: dict[str, str]) -> Settings:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert (done.returncode == 0) == ok, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done


def cycles_until_the_first(evo: EvolutionConsumer) -> list[Outcome]:
    """Run the evolution consumer until its first cycle ends (it stops itself then); every outcome it reported."""
    outcomes: list[Outcome] = []

    def seen(out: Outcome) -> None:
        outcomes.append(out)
        evo.stop_event.set()

    thread = threading.Thread(target=evo.run, kwargs={"on_cycle": seen}, daemon=True)
    thread.start()
    thread.join(600)
    assert not thread.is_alive(), "no cycle ended within 600 s"
    return outcomes


def test_evolve_proposes_a_passing_candidate_and_keeps_an_over_pruned_one_from_serving(home: dict[str, str]) -> None:
    production = cli(home, "registry").stdout
    parent = production.split("production ")[1].split()[0].rstrip(",")
    plan = cli(home, "analyze", "--per-task", "4", "--top", "12").stdout.splitlines()
    assert plan[0].startswith("structure measured on") and len(plan) == 13, plan
    assert any(" head " in line for line in plan) and any("layer" in line for line in plan), plan
    done = cli(home, "evolve", "--recipe", "ffn=0.99", *FAST)
    assert "ffn0.99: PASS" in done.stdout, done.stdout + done.stderr
    version = done.stderr.strip().splitlines()[-1].split(":")[0]
    assert "proposed" in done.stderr.splitlines()[-1]
    shown = json.loads(cli(home, "registry", "show", version).stdout)
    assert (shown["stage"], shown["parent"], shown["operator"]) == ("staging", parent, "evolve")
    assert shown["operator_params"]["recipe"]["keep_ffn"] == 0.99
    assert shown["operator_params"]["trigger"].startswith("manual:")
    metrics = shown["metrics"]
    assert metrics["parameters"] == 1_427_840 - 6 * 2 * 128 * 6  # floor(0.99 * 512) = 506: 6 neurons gone per FFN
    assert metrics["vs_parent"]["parameters"] > 1.0 and metrics["bytes_on_disk"] > 0
    assert shown["validation"]["passed"] is True

    over = cli(
        home, "evolve", "--recipe", "drop=2,heads=0.25,ffn=0.05", "--steps", "0", "--held-out", "4", "--reps", "1"
    )
    assert "FAIL" in over.stdout and "max_task_drop" in over.stdout, over.stdout
    rejected = over.stderr.strip().splitlines()[-1].split(":")[0]
    assert "rejected by its validation" in over.stderr
    shown = json.loads(cli(home, "registry", "show", rejected).stdout)
    assert shown["stage"] == "candidate" and shown["validation"]["passed"] is False
    refused = cli(home, "promote", shown["model_name"], rejected, "--stage", "staging", ok=False)
    assert "no passed validation" in refused.stderr, refused.stderr
    audit = cli(home, "audit").stdout
    for line in (
        f"registered {version} (parent {parent}",
        f"validation of {version}: PASS",
        f"promoted {version} to staging",
        f"proposed {version}",
        f"validation of {rejected}: FAIL",
        "enrolled evolution as proposer",
    ):
        assert line in audit, (line, audit)
    assert f"proposed {rejected}" not in audit


def test_drift_on_the_production_version_starts_one_cycle_and_a_handled_trigger_is_skipped(
    kafka: str, home: dict[str, str]
) -> None:
    from evostream.cli.evolution import consumer

    settings = settings_of(home)
    cfg = CycleConfig(
        recipes=(Recipe(keep_ffn=0.99),), distill=DistillConfig(steps=5), held_out_per_task=4, speed_reps=1
    )
    evo = consumer(settings, kafka, "evostream/t5-tiny-suite", cfg)
    production = evo.production()
    codec = RecordCodec("DriftReport")
    producer = EventProducer(kafka)
    t = now_us()
    report = {
        "model_version": production,
        "reference_start_us": t - 10,
        "reference_end_us": t - 5,
        "window_start_us": t - 4,
        "window_end_us": t,
        "sample_count": 50,
        "statistics": [],
        "fired": True,
        "produced_at_us": t,
    }
    for _ in range(2):  # two windows of the same drift: one cycle
        producer.send(DRIFT, production, codec.encode(report))
    producer.send(DRIFT, "other@x", codec.encode({**report, "model_version": "other@x"}))  # not what serves
    producer.send(DRIFT, production, codec.encode({**report, "fired": False}))  # quiet
    producer.flush()
    outcomes = cycles_until_the_first(evo)
    assert [(o.trigger, o.skipped) for o in outcomes] == [(f"drift:{production}", False)], outcomes
    assert outcomes[0].version is not None and outcomes[0].passed
    again = evo.cycle(f"drift:{production}")  # a restart that reads the same report again
    assert again.skipped and again.version is None
    # another trigger that finds the very same candidate registers nothing twice
    before = len(evo.gov.state().registry.models["evostream/t5-tiny-suite"]["versions"])
    assert outcomes[0].result is not None
    assert propose(evo.gov, "evostream/t5-tiny-suite", outcomes[0].result, cfg, "schedule:1") == (
        outcomes[0].version,
        True,
    )
    assert len(evo.gov.state().registry.models["evostream/t5-tiny-suite"]["versions"]) == before
