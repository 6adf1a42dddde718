"""``evostream savings``: what routing saved, from the log: the cost paid against the cost had the reference answered
every request, per tenant and per route, with the self-share, escalations, cache hits and refusals
(``views.routes``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.settings import load_settings
from evostream.routing.policy import RoutingError
from evostream.routing.prices import PriceTable
from evostream.views.governance import parse_time
from evostream.views.routes import Savings, Tally, read_ledger

HEADER = (
    f"{'':24} {'requests':>8} {'self':>6} {'ref':>6} {'escal':>6} {'cache':>6} {'refused':>7} {'self%':>6} "
    f"{'paid $':>11} {'reference $':>11} {'saved $':>11}"
)


def tally_line(name: str, t: Tally) -> str:
    share = "-" if t.self_share is None else f"{100 * t.self_share:.1f}"
    return (
        f"{name[:24]:24} {t.requests:>8} {t.self_answered:>6} {t.reference_answered:>6} {t.escalated:>6} "
        f"{t.cache_hits:>6} {t.refusals:>7} {share:>6} {t.paid_usd:>11.6f} {t.reference_usd:>11.6f} "
        f"{t.saved_usd:>11.6f}"
    )


def savings_lines(s: Savings) -> list[str]:
    """The report as a table: per tenant, per route, and in all."""
    lines = [HEADER]
    for title, part in (("tenant", s.by_tenant), ("route", s.by_route)):
        lines += [tally_line(f"{title} {k}", t) for k, t in sorted(part.items())]
    lines.append(tally_line("all", s.total))
    return lines


def load_prices(path: Path | None) -> PriceTable:
    if path is None:
        return PriceTable()
    try:
        return PriceTable.from_bytes(path.read_bytes())
    except OSError as e:
        raise RoutingError(f"the price table {path} cannot be read: {e}") from e


@friendly
def savings(
    since: Annotated[str | None, typer.Option(help="From this time (e.g. 2026-11-23T14:03, UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Until this time (excluded).")] = None,
    route: Annotated[str | None, typer.Option(help="Only this route.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    prices: Annotated[
        Path | None, typer.Option(help="The price table (JSON). Env: EVOSTREAM_ROUTE_PRICES.", exists=True)
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="The reference's version where a decision names none (default: the one most named)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Cost paid against always the reference, per tenant and route, with self-share, escalations, cache hits and
    refusals: the requests first decided in [--since, --until), read from evo.routes and evo.completions."""
    settings = load_settings(bootstrap_servers=bootstrap)
    table = load_prices(prices or settings.route_prices)
    if not table.entries:
        say("no price table (--prices or EVOSTREAM_ROUTE_PRICES): every answer costs 0")
    since_us = None if since is None else parse_time(since)
    until_us = None if until is None else parse_time(until)
    ledger = read_ledger(
        broker(settings),
        since_us,
        until_us,
        keep=lambda d: (route is None or d["route"] == route) and (tenant is None or d["tenant"] == tenant),
    )
    report = ledger.savings(table, since_us, until_us, reference)
    for version in sorted(report.unpriced):
        say(f"the price table has no price for the reference {version}: its answers cost 0 here")
    if as_json:
        typer.echo(json.dumps(report.doc(), indent=2, sort_keys=True))
        return
    if report.total.requests == 0:
        say("no routing decision in that range")
    for line in savings_lines(report):
        typer.echo(line)
