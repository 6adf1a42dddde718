"""`evostream savings` (real process, real broker): cost paid against always the reference, per tenant and route,
from the decisions and Completions on the log."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from evostream.core.clock import now_us
from tests.views.route_log import REF, SELF, TABLE, publish, route_log, write_prices

CLI = [sys.executable, "-m", "evostream.cli"]


def iso(t_us: int) -> str:
    return dt.datetime.fromtimestamp(t_us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def test_savings_reports_cost_against_the_reference_per_tenant_and_route(kafka: str, tmp_path: Path) -> None:
    route = f"save-{uuid.uuid4().hex[:8]}"
    t0 = now_us()
    log = route_log(route, t0)
    publish(kafka, log)
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_ROUTE_PRICES": str(write_prices(tmp_path / "p")),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, "savings", "--route", route, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    doc = json.loads(cli("--json").stdout)
    one = TABLE.cost(REF, 100, 20)
    paid = TABLE.cost(SELF, 100, 20) + TABLE.cost(SELF, 100, 5) + 2 * one
    total = doc["total"]
    assert (total["requests"], total["self_answered"], total["reference_answered"], total["escalated"]) == (5, 1, 2, 1)
    assert (total["cache_hits"], total["refusals"], total["pending"]) == (1, 1, 0)
    assert total["paid_usd"] == pytest.approx(paid) and total["reference_usd"] == pytest.approx(4 * one)
    assert total["self_share"] == pytest.approx(1 / 3) and doc["unpriced"] == []
    assert doc["by_tenant"]["acme"]["refusals"] == 1 and doc["by_tenant"]["globex"]["escalated"] == 1
    assert list(doc["by_route"]) == [route]

    table = cli().stdout.splitlines()
    assert table[0].split()[:3] == ["requests", "self", "ref"]
    everything = next(line for line in table if line.startswith("all "))
    assert everything.split()[1:8] == ["5", "1", "2", "1", "1", "1", "33.3"]
    assert f"{4 * one - paid:.6f}" in everything

    # a range: requests 2 to 4 (decided at t0 + 2 ms .. t0 + 4 ms); a tenant
    ranged = json.loads(cli("--json", "--since", iso(t0 + 1500), "--until", iso(t0 + 4500)).stdout)["total"]
    assert (ranged["requests"], ranged["refusals"], ranged["self_answered"], ranged["cache_hits"]) == (3, 0, 0, 1)
    acme = json.loads(cli("--json", "--tenant", "acme").stdout)["total"]
    assert (acme["requests"], acme["self_answered"], acme["reference_answered"], acme["refusals"]) == (3, 1, 1, 1)

    no_prices = subprocess.run(
        [*CLI, "savings", "--route", route, "--json"],
        env={k: v for k, v in env.items() if k != "EVOSTREAM_ROUTE_PRICES"},
        capture_output=True,
        text=True,
    )
    assert "every answer costs 0" in no_prices.stderr and f"no price for the reference {REF}" in no_prices.stderr
