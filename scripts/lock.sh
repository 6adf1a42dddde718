#!/usr/bin/env bash
# Re-resolve the dependencies of pyproject.toml (with the dev extra) into requirements.lock.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --upgrade pip
"$tmp/venv/bin/pip" install --quiet "$root[dev]"
{
  echo "# Pinned environment for development, tests and CI (Linux x86_64, Python 3.11). Regenerate: scripts/lock.sh"
  "$tmp/venv/bin/pip" freeze --all --exclude-editable | grep -v -E '^(evostream|pip)=='
} > "$root/requirements.lock"
echo "wrote $root/requirements.lock" >&2
