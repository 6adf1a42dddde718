"""The SQLite sink on a real database file: the shared contract, the rows as plain SQL reads them, and positions that
live and die with the rows in one transaction."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from evostream.consumers.sinks.contract import Record, Status
from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Sink, SinkContext
from evostream.plugins.sqlite import TABLES, SqliteSink, connect
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.samples import sample_records


def db_of(sink: Sink) -> Path:
    assert isinstance(sink, SqliteSink)
    return sink.path


class TestSqliteContract(SinkContract):
    sink_name = "sqlite"

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {"path": str(tmp_path / "reports.db"), "busy_timeout_ms": "50"}

    def make_sink(self, ctx: SinkContext) -> Sink:
        return SqliteSink(ctx)

    def stored(self, sink: Sink) -> Counter[str]:
        with contextlib.closing(connect(db_of(sink), read_only=True)) as c:
            return Counter(k for t in TABLES for (k,) in c.execute(f"SELECT record_key FROM {t}"))

    @contextlib.contextmanager
    def failing(self, sink: Sink, kind: Kind, times: int) -> Iterator[None]:
        db = db_of(sink)
        if kind == "permanent":
            # the database itself refuses one record: a trigger aborts its insert as a constraint would
            with contextlib.closing(connect(db)) as c:
                c.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON traces WHEN NEW.trace_id = 'trace-1' "
                    "BEGIN SELECT RAISE(ABORT, 'trace-1 refused'); END"
                )
            try:
                yield
            finally:
                with contextlib.closing(connect(db)) as c:
                    c.execute("DROP TRIGGER refuse")
            return
        # another writer holds the write lock for the next ``times`` writes, then lets go
        other = connect(db)
        other.execute("BEGIN IMMEDIATE")
        real = sink.write
        calls = 0

        def write(records: Sequence[Record]) -> object:
            nonlocal calls
            out = real(records)
            calls += 1
            if calls == times and other.in_transaction:
                other.execute("ROLLBACK")
            return out

        sink.write = write  # type: ignore[method-assign]  # counts the calls; the lock is real
        try:
            yield
        finally:
            del sink.write
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        (tmp_path / "not-a-db").write_bytes(b"this is not an SQLite database, it is a text file" * 20)
        return {"path": str(tmp_path / "not-a-db")}


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SqliteSink]:
    s = SqliteSink(SinkContext("sqlite", tmp_path, {"path": str(tmp_path / "r.db")}))
    yield s
    s.close()


def test_rows_are_plain_sql_readable_from_another_process(sink: SqliteSink) -> None:
    assert sink.write(sample_records(per_topic=3)).status is Status.OK
    script = (
        "import sqlite3, sys, json; c = sqlite3.connect(sys.argv[1]); print(json.dumps({"
        "'traces': c.execute('SELECT trace_id, model_version, token_count, finish_reason, prefill_us FROM traces "
        "ORDER BY trace_id').fetchall(),"
        "'summary': c.execute('SELECT trace_id, score, flags FROM trace_summary ORDER BY trace_id').fetchall(),"
        "'alerts': c.execute('SELECT severity FROM alerts ORDER BY record_key').fetchall(),"
        "'drift': c.execute('SELECT fired, json_extract(statistics, \"$[0].name\") FROM drift_windows "
        "ORDER BY record_key').fetchall(),"
        "'gov': c.execute('SELECT sequence, type, json_extract(payload, \"$.version\") FROM governance_events "
        "ORDER BY sequence').fetchall()}))"
    )
    got = json.loads(
        subprocess.run(
            [sys.executable, "-c", script, str(sink.path)], check=True, capture_output=True, text=True
        ).stdout
    )
    assert got == {
        "traces": [
            ["trace-0", "tiny-a", 4, "STOP", 3000],
            ["trace-1", "tiny-b", 5, "STOP", 3100],
            ["trace-2", "tiny-a", 6, "LENGTH", 3200],
        ],
        "summary": [
            ["trace-0", 0.25, "[]"],
            ["trace-1", 0.751, '["high_entropy","low_margin"]'],
            ["trace-2", 0.252, "[]"],
        ],
        "alerts": [["INFO"], ["WARNING"], ["CRITICAL"]],
        "drift": [[0, "embedding_mmd2"], [1, "embedding_mmd2"], [0, "embedding_mmd2"]],
        "gov": [[0, "ModelRegistered", "tiny-a"], [1, "Promoted", "tiny-a"], [2, "RolledBack", "tiny-a"]],
    }


def test_positions_are_written_with_the_rows_and_only_with_them(sink: SqliteSink) -> None:
    recs = sample_records(per_topic=3)
    assert sink.positions() == {}
    assert sink.write(recs).status is Status.OK
    assert sink.positions() == {(r.topic, 0): 3 for r in recs}
    # a write whose transaction dies after its rows went in (the positions insert fails) leaves neither
    with contextlib.closing(connect(sink.path)) as c:
        c.execute("CREATE TRIGGER die BEFORE UPDATE ON sink_positions BEGIN SELECT RAISE(FAIL, 'disk gone'); END")
    more = sample_records(per_topic=2, first=3)
    out = sink.write(more)
    assert out.status is Status.RETRYABLE and "disk gone" in out.reason
    with contextlib.closing(connect(sink.path)) as c:
        assert sum(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES) == len(recs)
        c.execute("DROP TRIGGER die")
    assert sink.positions() == {(r.topic, 0): 3 for r in recs}
    assert sink.write(more).status is Status.OK
    assert sink.positions() == {(r.topic, 0): 5 for r in recs}


def test_a_poison_record_is_rolled_back_alone(sink: SqliteSink) -> None:
    with contextlib.closing(connect(sink.path)) as c:
        c.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.severity = 'CRITICAL' "
            "BEGIN SELECT RAISE(ABORT, 'no critical alerts here'); END"
        )
    recs = sample_records(per_topic=3)
    out = sink.write(recs)
    assert out.status is Status.FAILED and "no critical alerts here" in out.reason
    assert [r.key for r in out.poison] == ["evo.alerts:0:2"]
    with contextlib.closing(connect(sink.path, read_only=True)) as c:
        assert c.execute("SELECT count(*) FROM alerts").fetchone()[0] == 2
        assert c.execute("SELECT count(*) FROM traces").fetchone()[0] == 3


def test_a_read_only_connection_cannot_write(sink: SqliteSink, tmp_path: Path) -> None:
    with contextlib.closing(connect(sink.path, read_only=True)) as c:
        with pytest.raises(sqlite3.DatabaseError):
            c.execute("DELETE FROM traces")
        for sql in (f"ATTACH 'file:{tmp_path}/x.db?mode=rwc' AS x", f"VACUUM INTO '{tmp_path}/copy.db'"):
            with pytest.raises(sqlite3.DatabaseError, match=r"not authorized|authorization denied"):
                c.execute(sql)
        assert not (tmp_path / "x.db").exists() and not (tmp_path / "copy.db").exists()
        assert c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT count(*), max(i) FROM n"
        ).fetchone() == (3, 3)


def test_a_folder_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkConfigError, match="cannot create the folder"):
        SqliteSink(SinkContext("sqlite", tmp_path, {"path": str(tmp_path / "file" / "sub" / "r.db")}))


def test_a_null_in_a_required_column_is_poison_not_silently_dropped(tmp_path: Path) -> None:
    sink = SqliteSink(SinkContext("sqlite", tmp_path, {"path": str(tmp_path / "r.db")}))
    try:
        recs = sample_records(("evo.completions",), 3)
        bad = recs[1]
        broken = Record(
            bad.topic,
            bad.partition,
            bad.offset,
            bad.schema,
            {**bad.value, "output_text": None},
            bad.timestamp_us,
            bad.raw_key,
        )
        out = sink.write([recs[0], broken, recs[2]])
        assert out.status is Status.FAILED and [r.key for r in out.poison] == [bad.key]
        assert "NOT NULL" in out.reason
        assert sink.positions() == {("evo.completions", 0): bad.offset}  # held at the poison record
        with contextlib.closing(connect(sink.path, read_only=True)) as c:
            keys = [k for (k,) in c.execute("SELECT record_key FROM traces ORDER BY record_key")]
        assert keys == [recs[0].key, recs[2].key]
        assert sink.write(recs).status is Status.OK  # once it is fixed upstream and redelivered, it is stored
        assert sink.positions() == {("evo.completions", 0): 3}
    finally:
        sink.close()


def test_a_non_finite_risk_score_is_stored_as_null_not_refused(sink: SqliteSink) -> None:
    # SQLite has no NaN (it becomes NULL): a report whose score is not a number is still a report. Refused, it pinned
    # the partition's position at itself for good, and every restart read the partition again from there.
    recs = sample_records(("evo.risk", "evo.alerts"), 2)
    nan = [
        Record(r.topic, r.partition, r.offset, r.schema, {**r.value, "score": float("nan")}, r.timestamp_us)
        for r in recs
    ]
    assert sink.write(nan).status is Status.OK
    assert sink.positions() == {("evo.risk", 0): 2, ("evo.alerts", 0): 2}
    with contextlib.closing(connect(sink.path, read_only=True)) as c:
        scores = [s for (s,) in c.execute("SELECT score FROM risk_reports UNION ALL SELECT score FROM alerts")]
    assert scores == [None] * 4
