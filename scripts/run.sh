#!/usr/bin/env bash
# The main job on the embedded default: start the local Kafka broker (resolved from Maven Central the first time),
# create the catalog's topics, and prove the pipeline's transport with a 10,000-record round trip.
# The broker keeps running afterwards; `evostream stack down` stops it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/venv.sh")"
"$venv/bin/evostream" stack up
"$venv/bin/evostream" selfcheck --count 10000
echo "the broker keeps running: '$venv/bin/evostream stack status', '$venv/bin/evostream stack down'" >&2
