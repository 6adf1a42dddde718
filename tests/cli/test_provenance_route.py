"""`evostream provenance` of a routed request (real processes, real broker): the route's decisions, and for an
escalated request both traces, the self model's partial and the reference's answer."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from evostream.core.clock import now_us
from tests.views.route_log import publish, route_log

CLI = [sys.executable, "-m", "evostream.cli"]


def test_provenance_shows_the_route_and_both_traces_of_an_escalated_request(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-provenance-route-{run}",
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "a"),
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
    }

    def cli(*args: str) -> str:
        done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    model, small = f"m-{run}", f"m-{run}@1"
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "weights.bin").write_bytes(b"small model")
    cli("governance", "init")
    cli("register", model, small, "--artifact", str(tmp_path / "art"))
    log = route_log(f"prov-{run}", now_us(), self_version=small, ref="external:big")
    publish(kafka, log)

    out = cli("provenance", log.tid(2))  # the reference's answer of the escalated request
    lines = out.splitlines()
    assert f"trace {log.tid(2, 'p')}: answered by {small}" in out and "(partial: escalated)" in out, out
    assert f"trace {log.tid(2)}: answered by external:big" in out, out
    assert "external:big is not a governed version" in out and f"lineage: {small}" in out, out
    assert f"route of request {log.rid(2)} (prov-{run}, tenant globex): reference" in out, out
    route = lines[lines.index(next(x for x in lines if x.startswith("route of request"))) + 1 :]
    assert route[0].startswith(f"  PROMPT: self ({small}), score 0.100 vs gate 0.350, level 3, policy abab"), out
    assert route[1].startswith("  GENERATION at step 5: reference (external:big), score 0.620 vs gate 0.400"), out
    assert "token risk 0.620 > gate 0.400" in route[1]
    assert route[2].startswith(f"  partial trace {log.tid(2, 'p')}: {small}, 5 tokens, ESCALATED"), out
    assert route[3].startswith(f"  final trace {log.tid(2)}: external:big, 20 tokens, STOP"), out

    plain = cli("provenance", log.tid(1))  # answered by self: one trace, one decision
    assert plain.count("answered by") == 1 and "PROMPT: self" in plain and "GENERATION" not in plain, plain
