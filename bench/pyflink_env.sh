#!/usr/bin/env bash
# Ensure the PyFlink environment of the stream processors' peer (bench/flink_peer.py) and print its python.
#
# A virtual environment of its own (apache-flink pins its own numpy, pandas, pyarrow and Beam, which the project's
# environment must not be bent to), under the user's cache like the project's (scripts/venv.sh), with:
# - apache-flink, pinned; its Java side runs on the machine's Java 17 (`java` on PATH, or JAVA_HOME);
# - the project's pure dependencies that its risk fold and Avro codec import (numpy, fastavro, typing-extensions),
#   in ranges that fit both pyproject.toml and apache-flink's own pins. The project itself is not installed: the
#   peer puts the checkout on PYTHONPATH, so it always folds with the checkout's code;
# - the Kafka connector jar, from Maven Central, checked against its pinned SHA-256, in a cache folder beside it.
# Run again after a pin changes: the environment is brought to the new pins (nothing is downloaded when they hold).
#
# Prints the environment's python on stdout (progress goes to stderr). EVOSTREAM_PYFLINK_VENV moves the environment,
# PYTHON names the interpreter that creates it (3.11: apache-flink 2.3 has no wheels for 3.13).
set -euo pipefail

FLINK_VERSION=2.3.0
# The newest Kafka connector for Flink 2.x on Maven Central; built against 2.2, it runs on 2.3 (same connector API).
KAFKA_CONNECTOR=flink-sql-connector-kafka-5.0.0-2.2.jar
KAFKA_CONNECTOR_URL=https://repo1.maven.org/maven2/org/apache/flink/flink-sql-connector-kafka/5.0.0-2.2/$KAFKA_CONNECTOR
KAFKA_CONNECTOR_SHA256=5605c691d11a501382c383fecba37a7a552467da5ab7ba904ef5d6f3d62c5616
REQUIREMENTS=(
  "apache-flink==$FLINK_VERSION"
  "numpy>=1.26,<2.2"
  "fastavro>=1.9,<2,!=1.8.0"
  "typing-extensions>=4.6"
)

cache="${XDG_CACHE_HOME:-$HOME/.cache}/evostream"
venv="${EVOSTREAM_PYFLINK_VENV:-$cache/pyflink}"
jars="$cache/flink-jars"
python="${PYTHON:-python3.11}"
command -v java >/dev/null || [ -n "${JAVA_HOME:-}" ] \
  || { echo "PyFlink needs Java 11 or 17: install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME" >&2; exit 1; }

mkdir -p "$(dirname "$venv")" "$jars"
exec 9>"$venv.lock"
if ! flock -n 9; then
  echo "waiting for another caller to finish preparing $venv" >&2
  flock 9
fi
stamp="$(printf '%s\n' "${REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$stamp" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
      || { echo "the PyFlink environment needs Python 3.11 (set PYTHON; $python is not)" >&2; exit 1; }
    echo "creating the PyFlink environment in $venv (first time: apache-flink and Beam, a few minutes)" >&2
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --progress-bar off "${REQUIREMENTS[@]}" >&2
  echo "$stamp" >"$venv/.pins"
fi
if [ ! -f "$jars/$KAFKA_CONNECTOR" ]; then
  echo "fetching $KAFKA_CONNECTOR from Maven Central" >&2
  curl -sSfL -o "$jars/$KAFKA_CONNECTOR.part" "$KAFKA_CONNECTOR_URL"
  echo "$KAFKA_CONNECTOR_SHA256  $jars/$KAFKA_CONNECTOR.part" | sha256sum -c --quiet - >&2 \
    || { rm -f "$jars/$KAFKA_CONNECTOR.part"; echo "$KAFKA_CONNECTOR: checksum mismatch" >&2; exit 1; }
  mv "$jars/$KAFKA_CONNECTOR.part" "$jars/$KAFKA_CONNECTOR"
fi
echo "$venv/bin/python"
