"""The W&B sink, offline: the shared contract read back from the run files W&B wrote (its transaction log, checked
by CRC), one run per model version with history, summary, config and tables, resumed across flushes and restarts."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from evostream.consumers.sinks.contract import Record, Status
from evostream.plugins.api import Sink, SinkContext
from evostream.plugins.wandb import WandbSink, run_id
from tests.plugins.contract import Kind, SinkContract, children
from tests.plugins.samples import sample_records
from tests.plugins.wandb_reader import Run, read_runs


def wandb_dir(sink: Sink) -> Path:
    assert isinstance(sink, WandbSink)
    return sink.dir


class TestWandbContract(SinkContract):
    sink_name = "wandb"
    durable = False  # a restarted sink logs a redelivered record again: W&B history has no key to dedupe by
    retryable = "offline runs are written by W&B's local service: there is no remote that could be unavailable"

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {"dir": str(tmp_path / "wandb-runs")}

    def make_sink(self, ctx: SinkContext) -> Sink:
        return WandbSink(ctx)

    def stored(self, sink: Sink) -> Counter[str]:
        """History rows in the run files, by the topic of the record each one logs."""
        out: Counter[str] = Counter()
        for run in read_runs(wandb_dir(sink)):
            for row in run.history:
                out.update(
                    {f"evo.{k.removeprefix('records/')}": int(v) for k, v in row.items() if k.startswith("records/")}
                )
        return out

    def expected(self, records: Sequence[Record]) -> Counter[str]:
        return Counter(r.topic for r in records)

    @contextlib.contextmanager
    def failing(self, sink: Sink, kind: Kind, times: int) -> Iterator[None]:
        assert isinstance(sink, WandbSink) and kind == "permanent"
        before, sink.max_runs = sink.max_runs, len(sink.known)  # no room for one more model version's run
        try:
            yield
        finally:
            sink.max_runs = before

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        return {"mode": "sometimes", "dir": str(tmp_path / "w")}


def test_one_run_per_version_with_history_summary_config_and_tables(tmp_path: Path) -> None:
    before = children()
    sink = WandbSink(SinkContext("wandb", tmp_path, {"dir": str(tmp_path / "runs")}))
    try:
        assert sink.write(sample_records(sink.topics, per_topic=3)).status is Status.OK
        assert sink.flush().status is Status.OK
        # a second flush period resumes the same runs, continuing their steps
        assert sink.write(sample_records(sink.topics, per_topic=2, first=3)).status is Status.OK
    finally:
        sink.close()
    assert children() == before, "wandb-core left running after close()"
    runs = read_runs(tmp_path / "runs")
    assert all(r.exited and r.project == "evostream" for r in runs)
    by_name: dict[str, list[Run]] = {}
    for r in runs:
        by_name.setdefault(r.name, []).append(r)
    assert set(by_name) == {"tiny-a", "tiny-b"}
    assert {r.id for r in by_name["tiny-a"]} == {run_id("tiny-a")} and len(by_name["tiny-a"]) == 2  # resumed once
    assert by_name["tiny-b"][0].config["model_version"] == "tiny-b"
    steps = [row["_step"] for r in by_name["tiny-a"] for row in r.history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # monotone across the resumed run
    rows = [row for r in by_name["tiny-b"] for row in r.history]
    assert sum(row.get("tokens/generated", 0) for row in rows) == 5 + 7  # tiny-b's completions 1 and 3
    assert [row["risk/score_final"] for row in rows if "risk/score_final" in row] == pytest.approx([0.751, 0.753])
    last_b = by_name["tiny-b"][-1]
    alerts = last_b.table("alerts")
    assert alerts["columns"][:3] == ["produced_at_us", "trace_id", "severity"]
    assert [(row[1], row[2]) for row in alerts["data"]] == [("trace-1", "WARNING"), ("trace-3", "INFO")]
    assert [row[3] for row in last_b.table("drift_windows")["data"]] == [True, True]
    # governance: tiny-b was promoted to production in sample 4
    assert last_b.summary.get("stage") == "production"


def test_a_restarted_sink_continues_the_steps(tmp_path: Path) -> None:
    options = {"dir": str(tmp_path / "runs")}
    for first in (0, 4):
        sink = WandbSink(SinkContext("wandb", tmp_path, options))
        try:
            assert sink.write(sample_records(("evo.completions",), per_topic=4, first=first)).status is Status.OK
        finally:
            sink.close()
    steps = [row["_step"] for r in read_runs(tmp_path / "runs") if r.name == "tiny-a" for row in r.history]
    assert steps == [0, 1, 2, 3]  # completions 0, 2, then 4, 6: one row each, no step reused


def test_nothing_is_written_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)
    sink = WandbSink(SinkContext("wandb", tmp_path, {"dir": str(tmp_path / "runs")}))
    try:
        assert sink.write(sample_records(sink.topics, per_topic=2)).status is Status.OK
    finally:
        sink.close()
    assert list(home.rglob("*")) == []
