#!/usr/bin/env bash
# Run the test suite. The tests start (and stop) their own Kafka broker through the project's launcher.
# pytest's exit code 5 (no test collected) is a failure here, never a silent pass.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/venv.sh")" || exit 1
cd "$root"
"$venv/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$rc"
