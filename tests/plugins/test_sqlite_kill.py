"""Killing ``evostream sinks run`` between the SQLite sink's write and the Kafka commit, then restarting it, leaves
exactly one row per report: the restarted runner starts where the database's own positions say (written in the same
transaction as the rows), so it re-reads nothing and loses nothing."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from evostream.plugins.sqlite import SqliteSink, connect
from tests.plugins.kafka import committed, count_rows, marked, produce

pytestmark = pytest.mark.integration


def wait_for(what: Callable[[], bool], timeout_s: float, why: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if proc.poll() is not None:
            raise AssertionError(f"the runner exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{why}: {log.read_text()}")
        time.sleep(0.2)


def runner(kafka: str, db: Path, log: Path, prefix: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EVOSTREAM_SINK_SQLITE_PATH": str(db), "EVOSTREAM_SINKS_DIR": str(db.parent / "sinks")}
    cmd = [
        sys.executable,
        "-m",
        "evostream.cli",
        "sinks",
        "run",
        "--sinks",
        "sqlite",
        "--bootstrap",
        kafka,
        "--every",
        "0",
        "--group-prefix",
        prefix,
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def test_a_kill_between_write_and_commit_leaves_exactly_one_row_per_report(kafka: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    prefix = f"test-kill-{marker}-"  # a group of its own: no other run has committed anything in it
    group = f"{prefix}sqlite"
    values = marked(SqliteSink.topics, 5, marker)
    produce(kafka, values)
    db, like = tmp_path / "reports.db", f"{marker}-%"
    mine = {  # table -> (where, expected rows)
        "traces": "trace_id LIKE ?",
        "risk_reports": "trace_id LIKE ?",
        "alerts": "trace_id LIKE ?",
        "drift_windows": "model_version LIKE ?",
        "profiles": "model_version LIKE ?",
        "governance_events": "event_id LIKE ?",
    }

    def all_stored() -> bool:
        return all(count_rows(db, t, where, like) == 5 for t, where in mine.items())

    first_log = tmp_path / "first.log"
    # every batch waits 10 s between its flush and its commit; the reports of this test are written last, so once
    # they are all in the database the runner is inside that wait
    first = runner(kafka, db, first_log, prefix, "--pause-before-commit", "10", "--max-records", "100000")
    try:
        wait_for(all_stored, 120, "the first runner did not store the reports", first, first_log)
        with contextlib.closing(connect(db, read_only=True)) as c:
            own = {(t, p): o for t, p, o in c.execute("SELECT topic, partition, next_offset FROM sink_positions")}
        group_at = committed(kafka, group, list(own))
        behind = {tp: (group_at.get(tp), at) for tp, at in own.items() if group_at.get(tp, 0) < at}
        assert behind, "the kill must land after the sink's write and before the commit"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert first.returncode == -signal.SIGKILL

    second_log = tmp_path / "second.log"
    second = runner(kafka, db, second_log, prefix)
    try:
        wait_for(
            lambda: all(committed(kafka, group, list(own)).get(tp, 0) >= at for tp, at in own.items()),
            120,
            "the restarted runner did not catch up",
            second,
            second_log,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    log = second_log.read_text()
    assert second.returncode == 0, log
    assert re.search(r"sink sqlite resumes \d+ partitions at its own positions", log), log
    # the restarted runner started past everything the killed one wrote: it handed the sink nothing again
    assert re.findall(r"sqlite (\d+) records", log)[-1] == "0", log
    for table, where in mine.items():
        with contextlib.closing(connect(db, read_only=True)) as c:
            column = where.split()[0]
            per_id = c.execute(f"SELECT {column}, count(*) FROM {table} WHERE {where} GROUP BY {column}", (like,))
            counts = dict(per_id.fetchall())
        expected = 5 if column != "model_version" else None
        if expected is None:  # two model versions among five reports: 3 and 2
            assert sorted(counts.values()) == [2, 3] and sum(counts.values()) == 5, (table, counts)
        else:
            assert len(counts) == 5 and set(counts.values()) == {1}, (table, counts)
