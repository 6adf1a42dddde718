#!/usr/bin/env bash
# Build the dashboard's front-end assets: its npm dependencies (evostream/api/web/package-lock.json), copied into
# evostream/api/static/vendor/ where `evostream api` serves them. Nothing is loaded from a CDN at run time.
# Skipped when the vendor folder is newer than the lock file.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
web="$root/evostream/api/web"
vendor="$root/evostream/api/static/vendor"
if [ -f "$vendor/.complete" ] && [ -f "$vendor/uPlot.iife.min.js" ] && [ "$vendor/.complete" -nt "$web/package-lock.json" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "the dashboard's assets need npm (apt install nodejs npm)" >&2; exit 1; }
echo "building the dashboard's assets from npm (evostream/api/web)" >&2
npm ci --prefix "$web" --no-audit --no-fund --silent >&2
mkdir -p "$vendor"
cp "$web/node_modules/uplot/dist/uPlot.iife.min.js" "$web/node_modules/uplot/dist/uPlot.min.css" "$vendor/"
cp "$web/node_modules/uplot/LICENSE" "$vendor/uPlot.LICENSE"
touch "$vendor/.complete"
