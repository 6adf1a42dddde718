"""librdkafka's logging, routed through Python logging as one line per change of the connection to the cluster.

While no broker answers, librdkafka logs every failed connection attempt (``%3|...|FAIL|...`` on stderr) several times a
second, for as long as the outage lasts. A ``ConnectionWatch`` given to a client instead:

- forwards librdkafka's log records to the ``evostream.bus.librdkafka`` logger, minus the per-attempt FAIL lines;
- logs one WARNING, with librdkafka's error, when the client loses every broker;
- logs one INFO when a broker answers again (seen in librdkafka's statistics, which list each broker's state).

Callbacks run inside the client's own poll / consume / flush calls, on the calling thread.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from confluent_kafka import KafkaError

log = logging.getLogger("evostream.bus")
LIBRDKAFKA = logging.getLogger("evostream.bus.librdkafka")

# Errors that mean "cannot reach the cluster", as opposed to a problem with one request.
_CONNECTION_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
STATS_INTERVAL_MS = 1000


class _DropConnectFailures(logging.Filter):
    """librdkafka logs each failed connect attempt under the FAIL facility; the watch reports the outage once."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and args[0] == "FAIL":
            self.dropped += 1
            return False
        return True


CONNECT_FAILURES = _DropConnectFailures()
"""The filter on librdkafka's logger; ``dropped`` counts the connection-failure lines it kept out of the log."""
LIBRDKAFKA.addFilter(CONNECT_FAILURES)


class ConnectionWatch:
    """Tracks one client's connection to the cluster and logs its changes; ``config()`` goes into the client's."""

    def __init__(self, bootstrap: str, client: str) -> None:
        self.bootstrap = bootstrap
        self.client = client
        self.connected = True
        self.lost = 0
        """How many times the connection was lost (for tests and counters)."""
        self.restored = 0
        self._last_error = ""

    def config(self) -> dict[str, Any]:
        return {
            "logger": LIBRDKAFKA,
            "error_cb": self._on_error,
            "stats_cb": self._on_stats,
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "log.connection.close": False,  # idle connections closed by the broker are normal, not news
        }

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _CONNECTION_CODES:
            if self.connected:
                self.connected = False
                self.lost += 1
                log.warning("%s lost the Kafka cluster at %s: %s", self.client, self.bootstrap, err.str())
            return
        text = err.str()
        if text != self._last_error:  # librdkafka repeats an error on every retry: say it once until it changes
            self._last_error = text
            log.error("%s: Kafka error: %s", self.client, text)

    def _on_stats(self, stats_json: str) -> None:
        if self.connected:
            return
        brokers = json.loads(stats_json).get("brokers", {})
        up = [b for b in brokers.values() if b.get("nodeid", -1) >= 0 and b.get("state") == "UP"]
        if up:
            self.connected = True
            self.restored += 1
            log.info(
                "%s reached the Kafka cluster at %s again (broker %s)",
                self.client,
                self.bootstrap,
                up[0].get("name", "?"),
            )
