#!/usr/bin/env bash
# The main job on the embedded default: start the local Kafka broker (resolved from Maven Central the first time),
# create the catalog's topics, prove the transport with a 10,000-record round trip, then serve the embedded model and
# answer one prompt per task through Kafka, each token's GenerationStep checked on evo.steps, with the stream
# processors running beside it and each answer's FINAL risk report shown; then the SQLite sink takes every report
# into ~/.local/share/evostream/sinks/sqlite/evostream.db and the latest traces are read back with SQL.
# The broker keeps running afterwards; `make stop` (or `evostream stack down`) stops it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/venv.sh")"
export HF_HUB_OFFLINE=1  # nothing is downloaded from a hub at run time
"$venv/bin/evostream" stack up
"$venv/bin/evostream" selfcheck --count 10000
"$venv/bin/evostream" demo
"$venv/bin/evostream" sinks run --sinks sqlite --until-idle --every 0
"$venv/bin/evostream" query "SELECT trace_id, model_version, token_count, finish_reason, round(score, 3) AS risk, flags FROM trace_summary ORDER BY completed_at_us DESC" --limit 6
echo "the broker keeps running: '$venv/bin/evostream stack status', '$venv/bin/evostream stack down'" >&2
