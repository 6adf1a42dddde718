"""The SQLite sink, the embedded default: every report in one file that plain ``sqlite3`` and ``evostream query``
read.

Tables (one row per record, keyed by ``record_key`` = ``topic:partition:offset``, so a redelivered record is
ignored):

- ``traces``: one per Completion (request, model version, tenant, token counts, finish reason, error, timings in
  microseconds, output text);
- ``risk_reports`` (early and final), ``alerts``, ``drift_windows`` (statistics as JSON), ``profiles`` (the
  per-layer vectors as JSON), ``governance_events`` (payload as JSON);
- ``trace_summary`` (a view): each trace with its final risk report: score, flags, blamed layers, steps;
- ``sink_positions``: the next offset to read per (topic, partition).

Each ``write`` is one transaction holding the rows **and** the positions, so the runner, which starts where
``positions()`` says, neither loses nor duplicates a report when it dies between this write and its Kafka commit.
A non-finite risk score is stored as NULL (SQLite has no NaN). A record the database refuses (a constraint) is rolled
back alone (a savepoint per record) and answered as poison; the partition's position then stays at that record, since
its dead letter is sent only after this write: a crash before the runner's commit reads it (and the records after it,
ignored as redeliveries) again, so its dead letter is never lost. A locked or unwritable database is answered as
retryable, and nothing of the batch is kept.

Options: ``path`` (default ``<sinks_dir>/sqlite/evostream.db``), ``busy_timeout_ms`` (default 2000)."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Positions, Record, Result, Sink, SinkContext
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, GOVERNANCE, PROFILES, RISK

SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    record_key TEXT PRIMARY KEY, trace_id TEXT NOT NULL, request_id TEXT NOT NULL, tenant TEXT NOT NULL,
    model_version TEXT NOT NULL, prompt_token_count INTEGER NOT NULL, token_count INTEGER NOT NULL,
    finish_reason TEXT NOT NULL, error TEXT, queue_us INTEGER, prefill_us INTEGER, decode_us INTEGER,
    total_us INTEGER, output_text TEXT NOT NULL, completed_at_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS traces_trace ON traces (trace_id);
CREATE INDEX IF NOT EXISTS traces_version ON traces (model_version, completed_at_us);
CREATE TABLE IF NOT EXISTS risk_reports (
    record_key TEXT PRIMARY KEY, trace_id TEXT NOT NULL, request_id TEXT NOT NULL, model_version TEXT NOT NULL,
    stage TEXT NOT NULL, step INTEGER, score REAL, flags TEXT NOT NULL, blamed_layers TEXT NOT NULL,
    reason TEXT NOT NULL, steps INTEGER NOT NULL, policy TEXT NOT NULL, produced_at_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS risk_trace ON risk_reports (trace_id, stage);
CREATE TABLE IF NOT EXISTS alerts (
    record_key TEXT PRIMARY KEY, trace_id TEXT NOT NULL, request_id TEXT NOT NULL, model_version TEXT NOT NULL,
    severity TEXT NOT NULL, stage TEXT NOT NULL, score REAL, flags TEXT NOT NULL,
    blamed_layers TEXT NOT NULL, reason TEXT NOT NULL, policy TEXT NOT NULL, produced_at_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drift_windows (
    record_key TEXT PRIMARY KEY, model_version TEXT NOT NULL, reference_start_us INTEGER NOT NULL,
    reference_end_us INTEGER NOT NULL, window_start_us INTEGER NOT NULL, window_end_us INTEGER NOT NULL,
    sample_count INTEGER NOT NULL, fired INTEGER NOT NULL, statistics TEXT NOT NULL, produced_at_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (
    record_key TEXT PRIMARY KEY, model_version TEXT NOT NULL, window_start_us INTEGER NOT NULL,
    window_end_us INTEGER NOT NULL, trace_count INTEGER NOT NULL, step_count INTEGER NOT NULL,
    head_utilization TEXT NOT NULL, dormant_neuron_fraction TEXT NOT NULL, layer_frequency TEXT NOT NULL,
    top_token_paths TEXT NOT NULL, produced_at_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS governance_events (
    record_key TEXT PRIMARY KEY, sequence INTEGER NOT NULL, event_id TEXT NOT NULL, model_name TEXT NOT NULL,
    type TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL,
    occurred_at_us INTEGER NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sink_positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition));
CREATE VIEW IF NOT EXISTS trace_summary AS
    SELECT t.trace_id, t.model_version, t.tenant, t.token_count, t.finish_reason, t.total_us, r.score, r.flags,
           r.blamed_layers, r.steps, t.completed_at_us
    FROM traces t LEFT JOIN risk_reports r ON r.trace_id = t.trace_id AND r.stage = 'FINAL';
"""

TABLES = ("traces", "risk_reports", "alerts", "drift_windows", "profiles", "governance_events")
"""The tables with one row per record (``sink_positions`` is bookkeeping)."""

Row = tuple[str, dict[str, Any]]


def _js(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _trace(v: Mapping[str, Any]) -> Row:
    t = v["timings"]
    return "traces", {
        "trace_id": v["trace_id"],
        "request_id": v["request_id"],
        "tenant": v["tenant"],
        "model_version": v["model_version"],
        "prompt_token_count": v["prompt_token_count"],
        "token_count": v["token_count"],
        "finish_reason": v["finish_reason"],
        "error": v["error"],
        "queue_us": t["queue_us"],
        "prefill_us": t["prefill_us"],
        "decode_us": t["decode_us"],
        "total_us": t["total_us"],
        "output_text": v["output_text"],
        "completed_at_us": v["completed_at_us"],
    }


def _risk(v: Mapping[str, Any]) -> Row:
    return "risk_reports", {
        "trace_id": v["trace_id"],
        "request_id": v["request_id"],
        "model_version": v["model_version"],
        "stage": v["stage"],
        "step": v["step"],
        "score": v["score"],
        "flags": _js(v["flags"]),
        "blamed_layers": _js(v["blamed_layers"]),
        "reason": v["reason"],
        "steps": v["steps"],
        "policy": v["policy"],
        "produced_at_us": v["produced_at_us"],
    }


def _alert(v: Mapping[str, Any]) -> Row:
    return "alerts", {
        "trace_id": v["trace_id"],
        "request_id": v["request_id"],
        "model_version": v["model_version"],
        "severity": v["severity"],
        "stage": v["stage"],
        "score": v["score"],
        "flags": _js(v["flags"]),
        "blamed_layers": _js(v["blamed_layers"]),
        "reason": v["reason"],
        "policy": v["policy"],
        "produced_at_us": v["produced_at_us"],
    }


def _drift(v: Mapping[str, Any]) -> Row:
    return "drift_windows", {
        "model_version": v["model_version"],
        "reference_start_us": v["reference_start_us"],
        "reference_end_us": v["reference_end_us"],
        "window_start_us": v["window_start_us"],
        "window_end_us": v["window_end_us"],
        "sample_count": v["sample_count"],
        "fired": int(v["fired"]),
        "statistics": _js(v["statistics"]),
        "produced_at_us": v["produced_at_us"],
    }


def _profile(v: Mapping[str, Any]) -> Row:
    return "profiles", {
        "model_version": v["model_version"],
        "window_start_us": v["window_start_us"],
        "window_end_us": v["window_end_us"],
        "trace_count": v["trace_count"],
        "step_count": v["step_count"],
        "head_utilization": _js(v["head_utilization"]),
        "dormant_neuron_fraction": _js(v["dormant_neuron_fraction"]),
        "layer_frequency": _js(v["layer_frequency"]),
        "top_token_paths": _js(v["top_token_paths"]),
        "produced_at_us": v["produced_at_us"],
    }


def _governance(v: Mapping[str, Any]) -> Row:
    return "governance_events", {
        "sequence": v["sequence"],
        "event_id": v["event_id"],
        "model_name": v["model_name"],
        "type": v["type"],
        "actor": v["actor"],
        "reason": v["reason"],
        "payload": v["payload_json"],
        "occurred_at_us": v["occurred_at_us"],
        "prev_hash": v["prev_hash"],
        "hash": v["hash"],
    }


ROWS: dict[str, Callable[[Mapping[str, Any]], Row]] = {
    COMPLETIONS: _trace,
    RISK: _risk,
    ALERTS: _alert,
    DRIFT: _drift,
    PROFILES: _profile,
    GOVERNANCE: _governance,
}


def default_path(ctx: SinkContext) -> Path:
    return ctx.data_dir / "evostream.db"


_READS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE})


def _reads_only(action: int, *_: str | None) -> int:
    """SQLite's authorizer on a read-only connection: a statement may select, read columns and call functions.

    ``mode=ro`` alone guards only the opened file: ``ATTACH 'file:x?mode=rwc'`` and ``VACUUM INTO`` (which attaches
    too) create and write other files. Every other action (attach, pragma, writes, transactions) fails at prepare."""
    return sqlite3.SQLITE_OK if action in _READS else sqlite3.SQLITE_DENY


def connect(path: Path, busy_timeout_ms: int = 2000, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit); a read-only one can read ``path`` and nothing
    else: no write to it, no other database attached, no file written anywhere."""
    if read_only:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    if read_only:
        conn.execute("PRAGMA query_only = ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.set_authorizer(_reads_only)
    return conn


class SqliteSink(Sink):
    topics = (COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, GOVERNANCE)

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        self.path = Path(ctx.option("path") or default_path(ctx)).expanduser()
        busy = ctx.number("busy_timeout_ms", 2000)
        if busy < 0:
            raise SinkConfigError(f"sink {self.name!r}: busy_timeout_ms must be >= 0, got {busy:g}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkConfigError(f"sink {self.name!r}: cannot create the folder of {self.path}: {e}") from e
        try:
            self.conn = connect(self.path, int(busy))
        except sqlite3.Error as e:
            raise SinkConfigError(f"sink {self.name!r}: cannot open {self.path}: {e}") from e
        try:
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")  # a committed write survives a power cut, not only a kill
            self.conn.executescript(SCHEMA)
        except sqlite3.Error as e:
            self.conn.close()
            raise SinkConfigError(f"sink {self.name!r}: {self.path} is not a usable SQLite database: {e}") from e

    def write(self, records: Sequence[Record]) -> Result:
        if not records:
            return Result.ok()
        ends: dict[tuple[str, int], int] = defaultdict(int)
        poison: list[tuple[Record, str]] = []
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                held: dict[tuple[str, int], int] = {}
                for rec in records:
                    tp = (rec.topic, rec.partition)
                    ends[tp] = max(ends[tp], rec.offset + 1)
                    table, row = ROWS[rec.topic](rec.value)
                    c.execute("SAVEPOINT record")
                    try:  # only a redelivery is ignored: any other constraint (NOT NULL, a trigger) is poison
                        c.execute(
                            f"INSERT INTO {table} (record_key, {', '.join(row)}) VALUES (?{', ?' * len(row)}) "
                            "ON CONFLICT (record_key) DO NOTHING",
                            (rec.key, *row.values()),
                        )
                    except sqlite3.IntegrityError as e:
                        poison.append((rec, f"{table}: {e}"))
                        held[tp] = min(held.get(tp, rec.offset), rec.offset)
                        c.execute("ROLLBACK TO record")
                    c.execute("RELEASE record")
                ends.update(held)  # see the module docstring: a poison record's dead letter is not yet acknowledged
                c.executemany(
                    "INSERT INTO sink_positions (topic, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                    [(t, p, o) for (t, p), o in ends.items()],
                )
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:  # locked, busy, read-only file, full disk: nothing of the batch was kept
            return Result.retry(f"{self.path}: {type(e).__name__}: {e}")
        if poison:
            return Result.failed("; ".join(sorted({why for _, why in poison})), [r for r, _ in poison])
        return Result.ok()

    def positions(self) -> Positions:
        try:
            rows = self.conn.execute("SELECT topic, partition, next_offset FROM sink_positions").fetchall()
        except sqlite3.Error as e:
            raise SinkConfigError(f"sink {self.name!r}: cannot read positions from {self.path}: {e}") from e
        return {(t, p): o for t, p, o in rows}

    def close(self) -> None:
        self.conn.close()
