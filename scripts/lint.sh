#!/usr/bin/env bash
# The static checks, one list for `make lint` and CI: ruff (lint and layout), no layout opt-outs, mypy --strict,
# the import layers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$("$root/scripts/venv.sh")}"
cd "$root"
echo "== ruff" >&2
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
# The formatter owns the layout: no `fmt: skip` / `fmt: off` anywhere.
if git grep -nE "#[[:space:]]*fmt:[[:space:]]*(skip|off)" -- '*.py'; then  # tracked files: not a .venv or build/
  echo "the lines above opt out of the formatter: remove the markers and run ruff format" >&2
  exit 1
fi
echo "== mypy" >&2
"$venv/bin/mypy"
echo "== import layers" >&2
"$venv/bin/lint-imports"
