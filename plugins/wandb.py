"""The W&B sink: one W&B run per model version, offline by default (``wandb sync`` uploads it later), with the
reports as history and the alerts and drift windows as tables.

Per record, one history row at the run's next step: completions (``tokens/generated``, ``tokens/prompt``,
``latency/time_to_first_token_s``, ``latency/request_s``), risk reports (``risk/score``, ``risk/flags``), alerts
(``alerts/<severity>``), drift windows (``drift/<statistic>``, ``drift/fired``), profiles
(``profile/dormant_neuron_fraction``), governance events (``governance/<type>``), and ``records/<topic>`` = 1.
Tables, logged at each flush: ``alerts`` and ``drift_windows`` (every row so far in this process). Governance events
go to the run of the version they name (a governance run for those that name none), and a promotion sets the run's
summary ``stage``.

Durability: W&B's service writes an offline run's file when the run finishes, so ``flush`` finishes every open run and
the next write resumes it (same run id, a new ``offline-run-*-<id>-N`` folder that ``wandb sync`` merges into the same
run). Finishing a run takes long enough to matter (measured with the sink's tests; docs/benchmarks.md#sinks), so the
sink asks the runner to flush every ``flush_interval_s`` (option, default 10 s). Steps per run are kept in
``steps.json`` beside the runs so a restarted sink continues them (W&B drops history rows whose step goes back). Within
a process a record key is logged once.

Options: ``dir`` (default the sink's folder), ``project`` (default ``evostream``), ``mode`` (``offline``, default,
or ``online``), ``max_runs`` (default 100: a record of one more model version is refused as poison),
``flush_interval_s``. W&B's own caches and logs are kept under ``dir`` too, not the user's home: the sink sets
``WANDB_CACHE_DIR``, ``WANDB_DATA_DIR``, ``WANDB_CONFIG_DIR`` and ``WANDB_ARTIFACT_DIR`` for its process where they are
unset (W&B reads them from the environment only). In online mode, a W&B that cannot be reached is retryable."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb

from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Record, Result, Sink, SinkContext
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, GOVERNANCE, PROFILES, RISK

GOVERNANCE_RUN = "governance"
COLUMNS = {
    "alerts": ("produced_at_us", "trace_id", "severity", "stage", "score", "flags", "reason"),
    "drift_windows": ("window_start_us", "window_end_us", "sample_count", "fired", "statistics_fired"),
}
UNREACHABLE = (wandb.errors.CommError, ConnectionError, TimeoutError)
"""What an online run raises while W&B cannot be reached: retryable."""
TABLE_ROWS = 10_000
"""Rows kept per table and run: the newest (a W&B table is logged whole each time)."""


def run_id(name: str) -> str:
    """A W&B run id for ``name`` (ids allow letters, digits, - and _): readable, and unique by its hash suffix."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', name)[:40]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


class WandbSink(Sink):
    topics = (COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, GOVERNANCE)

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        self.mode = (ctx.option("mode", "offline") or "offline").lower()
        if self.mode not in ("offline", "online"):
            raise SinkConfigError(f"sink {self.name!r}: mode must be offline or online, got {self.mode!r}")
        self.dir = Path(ctx.option("dir") or ctx.data_dir).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkConfigError(f"sink {self.name!r}: cannot create {self.dir}: {e}") from e
        self.project = ctx.option("project", "evostream") or "evostream"
        self.max_runs = int(ctx.number("max_runs", 100))
        self.flush_interval_s = ctx.number("flush_interval_s", 10.0)
        if self.max_runs < 1 or self.flush_interval_s < 0:
            raise SinkConfigError(f"sink {self.name!r}: max_runs must be >= 1 and flush_interval_s >= 0")
        for var, sub in (
            ("WANDB_CACHE_DIR", "cache"),
            ("WANDB_DATA_DIR", "data"),
            ("WANDB_CONFIG_DIR", "config"),
            ("WANDB_ARTIFACT_DIR", "artifacts"),
        ):
            # not under dir/.wandb: W&B writes its runs there instead of dir/wandb once that folder exists, and
            # its service creates it (the cache) while a run is starting, so a run was split between the two
            os.environ.setdefault(var, str(self.dir / "wandb-home" / sub))
        self.settings = wandb.Settings(
            mode="online" if self.mode == "online" else "offline",
            silent=True,
            console="off",
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
            x_disable_meta=True,
            x_save_requirements=False,
        )
        self._steps_file = self.dir / "steps.json"
        self.steps: dict[str, int] = json.loads(self._steps_file.read_text()) if self._steps_file.is_file() else {}
        self.runs: dict[str, Any] = {}
        self.known: set[str] = set(self.steps)
        self.tables: dict[str, dict[str, list[list[Any]]]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    # -- runs -----------------------------------------------------------------------------------------------------

    def _run(self, name: str) -> Any:
        run = self.runs.get(name)
        if run is None:
            run = wandb.init(
                project=self.project,
                dir=str(self.dir),
                name=name,
                id=run_id(name),
                resume="allow",
                config={"model_version": name},
                settings=self.settings,
                reinit="create_new",
            )
            self.runs[name] = run
        return run

    @staticmethod
    def run_of(rec: Record) -> str:
        v = rec.value
        if "model_version" in v:
            return str(v["model_version"])
        version = json.loads(v["payload_json"]).get("version") if rec.topic == GOVERNANCE else None
        return str(version) if version else GOVERNANCE_RUN

    # -- write ----------------------------------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> Result:
        try:
            return self._write(records)
        except UNREACHABLE as e:  # online mode: what was logged is remembered, a retry logs only the rest
            return Result.retry(f"W&B unreachable: {type(e).__name__}: {e}")

    def _write(self, records: Sequence[Record]) -> Result:
        poison = []
        for rec in records:
            if rec.key in self._seen:
                continue
            name = self.run_of(rec)
            if name not in self.known and len(self.known) >= self.max_runs:
                poison.append(rec)
                continue
            self.known.add(name)
            run = self._run(name)
            step = self.steps.get(name, 0)
            run.log(self._row(rec), step=step)
            self.steps[name] = step + 1
            self._table_rows(name, rec)
            if rec.topic == GOVERNANCE and rec.value["type"] in ("Promoted", "RolledBack"):
                payload = json.loads(rec.value["payload_json"])
                run.summary["stage"] = payload.get("stage") or (
                    "production" if rec.value["type"] == "RolledBack" else payload.get("alias")
                )
            self._seen[rec.key] = None
            if len(self._seen) > 100_000:
                self._seen.popitem(last=False)
        if poison:
            return Result.failed(f"more than max_runs={self.max_runs} model versions: one W&B run each", poison)
        return Result.ok()

    @staticmethod
    def _row(rec: Record) -> dict[str, Any]:
        v, topic = rec.value, rec.topic
        row: dict[str, Any] = {f"records/{topic.removeprefix('evo.')}": 1}
        if topic == COMPLETIONS:
            t = v["timings"]
            row |= {
                "tokens/generated": v["token_count"],
                "tokens/prompt": v["prompt_token_count"],
                "latency/request_s": t["total_us"] / 1e6,
                f"finish/{v['finish_reason'].lower()}": 1,
            }
            if v["error"] is None and v["token_count"] > 0:
                row["latency/time_to_first_token_s"] = (t["queue_us"] + t["prefill_us"]) / 1e6
        elif topic == RISK:
            row |= {f"risk/score_{v['stage'].lower()}": v["score"], "risk/flags": len(v["flags"])}
        elif topic == ALERTS:
            row[f"alerts/{v['severity'].lower()}"] = 1
        elif topic == DRIFT:
            row |= {f"drift/{s['name']}": s["value"] for s in v["statistics"]} | {"drift/fired": int(v["fired"])}
        elif topic == PROFILES:
            fractions = v["dormant_neuron_fraction"]
            if fractions:
                row["profile/dormant_neuron_fraction"] = sum(fractions) / len(fractions)
        elif topic == GOVERNANCE:
            row[f"governance/{v['type']}"] = 1
        return row

    def _table_rows(self, name: str, rec: Record) -> None:
        v: Mapping[str, Any] = rec.value
        if rec.topic == ALERTS:
            table, row = (
                "alerts",
                [
                    v["produced_at_us"],
                    v["trace_id"],
                    v["severity"],
                    v["stage"],
                    v["score"],
                    ", ".join(v["flags"]),
                    v["reason"],
                ],
            )
        elif rec.topic == DRIFT:
            fired = ", ".join(s["name"] for s in v["statistics"] if s["fired"])
            table = "drift_windows"
            row = [v["window_start_us"], v["window_end_us"], v["sample_count"], v["fired"], fired]
        else:
            return
        rows = self.tables.setdefault(name, {}).setdefault(table, [])
        rows.append(row)
        del rows[:-TABLE_ROWS]

    # -- durability -----------------------------------------------------------------------------------------------

    def flush(self) -> Result:
        try:
            return self._flush()
        except UNREACHABLE as e:
            return Result.retry(f"W&B unreachable: {type(e).__name__}: {e}")

    def _flush(self) -> Result:
        for name, run in list(self.runs.items()):
            mine = self.tables.get(name, {})
            tables = {k: wandb.Table(columns=list(COLUMNS[k]), data=rows) for k, rows in mine.items()}
            if tables:
                step = self.steps.get(name, 0)
                run.log(tables, step=step)
                self.steps[name] = step + 1
            run.finish()
            del self.runs[name]
        tmp = self._steps_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.steps, sort_keys=True))
        tmp.replace(self._steps_file)
        return Result.ok()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            wandb.teardown()
