"""``evostream query`` reads the SQLite sink's database, read-only, as a person would from a shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evostream.consumers.sinks.contract import Status
from evostream.plugins.api import SinkContext
from evostream.plugins.sqlite import SqliteSink
from tests.plugins.samples import sample_records


def query(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evostream.cli", "query", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("query") / "r.db"
    sink = SqliteSink(SinkContext("sqlite", path.parent, {"path": str(path)}))
    assert sink.write(sample_records(per_topic=3)).status is Status.OK
    sink.close()
    return path


def test_without_sql_it_lists_tables_and_row_counts(db: Path) -> None:
    done = query("--db", str(db))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert rows["traces"] == ["table", "3", "rows"] and rows["sink_positions"] == ["table", "6", "rows"]
    assert rows["trace_summary"] == ["view", "3", "rows"]


def test_json_rows_and_the_limit(db: Path) -> None:
    done = query(
        "SELECT trace_id, score FROM trace_summary ORDER BY trace_id", "--db", str(db), "--json", "--limit", "2"
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(x) for x in done.stdout.splitlines()] == [
        {"trace_id": "trace-0", "score": 0.25},
        {"trace_id": "trace-1", "score": 0.751},
    ]
    assert "more rows than --limit 2" in done.stderr


def test_a_table_for_people(db: Path) -> None:
    done = query("SELECT severity, score FROM alerts ORDER BY score", "--db", str(db))
    assert done.returncode == 0, done.stderr
    table = [line.split() for line in done.stdout.splitlines()]
    assert table == [["severity", "score"], ["INFO", "0.8"], ["WARNING", "0.801"], ["CRITICAL", "0.802"]]


@pytest.mark.parametrize(
    "sql", ["DELETE FROM traces", "  update traces SET tenant = 'x'", "WITH x AS (SELECT 1) DELETE FROM traces"]
)
def test_writes_are_refused_and_change_nothing(db: Path, sql: str) -> None:
    done = query(sql, "--db", str(db))
    assert done.returncode == 1 and done.stderr.startswith("error: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert query("SELECT count(*) AS n FROM traces", "--db", str(db), "--json").stdout.strip() == '{"n": 3}'


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH 'file:{dir}/attached.db?mode=rwc' AS x",
        "VACUUM INTO '{dir}/copy.db'",
        "/* a comment first */ DELETE FROM traces",
        " -- a line comment\nVACUUM INTO '{dir}/copy.db'",
        "PRAGMA journal_mode = DELETE",
    ],
)
def test_no_statement_writes_a_file_anywhere(db: Path, tmp_path: Path, sql: str) -> None:
    """``mode=ro`` guards only the opened file: on the old command ATTACH and VACUUM INTO created these files."""
    done = query(sql.format(dir=tmp_path), "--db", str(db))
    assert done.returncode == 1 and "evostream query only reads" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
    assert query("SELECT count(*) AS n FROM traces", "--db", str(db), "--json").stdout.strip() == '{"n": 3}'


def test_a_missing_database_says_what_to_do(tmp_path: Path) -> None:
    done = query("--db", str(tmp_path / "none.db"))
    assert done.returncode == 1 and "run `evostream sinks run` first" in done.stderr, done.stderr
