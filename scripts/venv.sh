#!/usr/bin/env bash
# Ensure the project's virtual environment and print its path.
#
# The environment is keyed on requirements.lock and kept under the user's cache, so a fresh
# checkout (a CI run, a second clone) reuses it instead of downloading torch again; pip's own cache serves any
# rebuild. The project itself is installed editable, re-pointed at this checkout every time (seconds).
# A lock beside the environment serialises callers: two checkouts starting at once used to delete each other's
# half-built environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "evostream needs Python >= 3.11 ($python is $("$python" --version 2>&1))" >&2; exit 1; }
key="$(sha256sum < "$root/requirements.lock" | cut -c1-16)"
venv="${EVOSTREAM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/evostream/venvs/$key}"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if ! flock -n 9; then
  echo "waiting for another evostream checkout to finish preparing $venv" >&2
  flock 9
fi
if [ ! -f "$venv/.complete" ]; then
  echo "creating the Python environment in $venv (first time: downloads torch, several minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --progress-bar off -r "$root/requirements.lock" >&2
  touch "$venv/.complete"
fi
# Editable install of this checkout; --no-deps keeps it to seconds.
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$root" >"$venv/.editable.log" 2>&1 \
  || { cat "$venv/.editable.log" >&2; exit 1; }
# The dashboard's front-end assets (npm, once; a no-op after): `evostream api` serves them.
"$root/scripts/web.sh" || echo "warning: the dashboard's assets were not built (scripts/web.sh needs npm)" >&2
echo "$venv"
