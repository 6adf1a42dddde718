"""``evostream sinks run|list``: fan reports out to the sinks installed under the ``evostream.sinks`` entry points,
each in its own thread with its own consumer group; and ``evostream query``: read the SQLite sink's database."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.bus.security import act_as
from evostream.core.errors import SinkConfigError, SinkError
from evostream.core.settings import load_settings

if TYPE_CHECKING:
    from evostream.consumers.sinks.runner import SinkRunner

SinksOpt = Annotated[
    str | None, typer.Option(help="Comma-separated sink names. Env: EVOSTREAM_SINKS (default: sqlite).")
]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="SINK.OPTION=VALUE, repeatable (else env EVOSTREAM_SINK_<SINK>_<OPTION>)."),
]
GROUP_PREFIX = "evostream-sink-"
"""The default consumer groups' prefix (``consumers.sinks.runner.group_of``; imported late, as the CLI's services
are)."""
GroupOpt = Annotated[
    str,
    typer.Option(
        help="Consumer groups are <prefix><sink>: another prefix reads the topics "
        "from the start again, apart from other deployments."
    ),
]
PauseOpt = Annotated[float, typer.Option(hidden=True, help="Fault injection: wait between a flush and the commit.")]
SqlArg = Annotated[str | None, typer.Argument(help="A SELECT statement; none lists the tables and their row counts.")]
DbOpt = Annotated[
    Path | None,
    typer.Option(help="The database (default: the SQLite sink's, <sinks_dir>/sqlite/evostream.db)."),
]

sinks_app = typer.Typer(
    help="Fan reports out to SQLite, Prometheus, Datadog, W&B, OTLP or any installed sink.", no_args_is_help=True
)


def parse_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``["sqlite.path=/x.db", "prometheus.port=9464"]`` as ``{"sqlite": {"path": "/x.db"}, ...}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, dot, rest = item.partition(".")
        option, eq, value = rest.partition("=")
        if not (dot and eq and name and option):
            raise SinkConfigError(f"--option {item!r}: write it as SINK.OPTION=VALUE, e.g. sqlite.path=/tmp/r.db")
        out.setdefault(name, {})[option.lower()] = value
    return out


@sinks_app.command("list")
@friendly
def list_sinks() -> None:
    """The sinks installed in this environment (entry points of the group evostream.sinks), and whether each loads."""
    from evostream.plugins.discovery import available, load_one

    installed = available()
    for name, ep in installed.items():
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        try:
            load_one(name, installed)
            state = "ok"
        except SinkError as e:
            state = str(e)
        typer.echo(f"{name:12} {ep.value:40} {dist:20} {state}")


@sinks_app.command("run")
@friendly
def run(
    sinks: SinksOpt = None,
    option: OptionOpt = None,
    max_records: Annotated[int, typer.Option(min=1, help="Records per batch handed to a sink.")] = 500,
    every: Annotated[float, typer.Option(min=0.0, help="Seconds between progress lines (0: none).")] = 10.0,
    until_idle: Annotated[bool, typer.Option(help="Stop once every sink has caught up (a batch job).")] = False,
    pause_before_commit: PauseOpt = 0.0,
    group_prefix: GroupOpt = GROUP_PREFIX,
    bootstrap: Bootstrap = None,
) -> None:
    """Feed every chosen sink from Kafka until Ctrl-C: one consumer group per sink (evostream-sink-<name>), retries
    with backoff, poison records to evo.dlq, positions committed after each sink's durable write."""
    act_as("sinks")
    from evostream.consumers.sinks.runner import RunnerOptions, SinkRunner
    from evostream.plugins.api import SinkContext
    from evostream.plugins.discovery import load

    settings = load_settings(bootstrap_servers=bootstrap, sinks=sinks)
    chosen = load(settings.sinks)
    overrides = parse_options(option or [])
    unknown = sorted(set(overrides) - {name for name, _ in chosen})
    if unknown:
        raise SinkConfigError(f"--option for {', '.join(unknown)}, which is not among the sinks run ({settings.sinks})")
    server = broker(settings)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("evostream.sinks").setLevel(logging.INFO)  # where each sink resumes, its retries
    options = RunnerOptions(max_records=max_records, pause_before_commit_s=pause_before_commit)
    runners: list[SinkRunner] = []
    try:
        for name, cls in chosen:
            ctx = SinkContext.from_env(name, settings.sinks_dir / name, overrides.get(name))
            ctx.data_dir.mkdir(parents=True, exist_ok=True)
            runners.append(SinkRunner(server, cls(ctx), options, group=f"{group_prefix}{name}"))
    except BaseException:
        for r in runners:
            r.close()
        raise
    failures: dict[str, BaseException] = {}

    def work(r: SinkRunner) -> None:
        try:
            r.run(until_idle)
        except BaseException as e:  # one sink failing never stops the others; it is reported at the end
            failures[r.sink.name] = e
            say(f"sink {r.sink.name} stopped: {e}")

    def stop(*_: object) -> None:
        for r in runners:
            r.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    threads = [threading.Thread(target=work, args=(r,), name=f"sink-{r.sink.name}") for r in runners]
    for t in threads:
        t.start()
    names = ", ".join(r.sink.name for r in runners)
    say(f"sinks {names} reading from {server}; Ctrl-C stops after the batch in flight")
    started = time.monotonic()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(every or 1.0)
        if every and any(t.is_alive() for t in threads):
            say(progress(runners, time.monotonic() - started))
    say(progress(runners, time.monotonic() - started))
    if failures:
        raise SinkError("; ".join(f"{name}: {e}" for name, e in failures.items()))


def progress(runners: list[SinkRunner], elapsed: float) -> str:
    return "; ".join(
        f"{r.sink.name} {r.stats.records} records ({r.stats.records / max(elapsed, 1e-9):.0f}/s), "
        f"{r.stats.dead_letters} dead letters, {r.stats.retries} retries"
        for r in runners
    )


@friendly
def query(
    sql: SqlArg = None,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Rows printed at most (0: all).")] = 100,
) -> None:
    """Read the SQLite sink's reports with SQL, read-only: e.g. evostream query "SELECT * FROM trace_summary"."""
    from evostream.core.errors import EvoError
    from evostream.plugins.sqlite import connect

    settings = load_settings()
    path = db or Path(settings.sinks_dir / "sqlite" / "evostream.db")
    if not path.is_file():
        raise EvoError(f"no database at {path}: run `evostream sinks run` first, or pass --db")
    try:
        with closing(connect(path, read_only=True)) as conn:
            if sql is None:
                for name, kind in conn.execute(
                    "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
                    "ORDER BY type, name"
                ).fetchall():
                    n = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                    typer.echo(f"{name:20} {kind:5} {n} rows")
                return
            cur = conn.execute(sql)
            columns = [d[0] for d in cur.description or ()]
            rows = cur.fetchmany(limit) if limit else cur.fetchall()
            more = bool(limit) and cur.fetchone() is not None
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorcode", None) in {
            sqlite3.SQLITE_AUTH,
            sqlite3.SQLITE_READONLY,
        }:
            raise EvoError(f"evostream query only reads: the statement was refused ({e})") from e
        raise EvoError(f"query failed: {e}") from e
    if as_json:
        for row in rows:
            typer.echo(json.dumps(dict(zip(columns, row, strict=True)), default=str))
    else:
        table = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
        widths = [min(60, max(len(r[i]) for r in table)) for i in range(len(columns))]
        for r in table:
            typer.echo("  ".join(v[:60].ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if more:
        say(f"(more rows than --limit {limit})")
