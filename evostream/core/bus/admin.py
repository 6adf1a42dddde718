"""Broker readiness and topic management, with librdkafka errors translated into evostream's."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

from evostream.core.bus import security
from evostream.core.errors import AuthenticationError, BrokerUnavailableError, StackError
from evostream.schemas.catalog import TopicSpec


def admin_client(bootstrap: str, role: str | None = None, login: security.Credentials | None = None) -> AdminClient:
    """An admin client of ``bootstrap``, logged in as ``login``, else as ``role``'s principal (security.py)."""
    return _admin(bootstrap, role, login)[0]


def _admin(
    bootstrap: str, role: str | None = None, login: security.Credentials | None = None
) -> tuple[AdminClient, _AuthWatch]:
    watch = _AuthWatch()
    auth = login.librdkafka() if login is not None else security.client_config(bootstrap, role)
    # Quiet librdkafka: failures surface as exceptions below, not as log lines on stderr.
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "log_level": 0,
        "socket.connection.setup.timeout.ms": 2000,
        **auth,
        "error_cb": watch,
    }
    client = AdminClient(config)
    return client, watch


class _AuthWatch:
    """An admin client's error callback: keeps the broker's refusal of its login (it comes only here; the request
    itself just times out) for ``cluster_metadata`` to report instead of "no broker answers"."""

    def __init__(self) -> None:
        self.refused = ""

    def __call__(self, err: KafkaError) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            self.refused = err.str()


def cluster_metadata(
    bootstrap: str, timeout_s: float, *, role: str | None = None, login: security.Credentials | None = None
) -> ClusterMetadata:
    """Metadata of the cluster, or BrokerUnavailableError once ``timeout_s`` has passed without an answer;
    AuthenticationError as soon as the broker refuses the client's login (or its lack of one)."""
    admin, watch = _admin(bootstrap, role, login)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            md: ClusterMetadata = admin.list_topics(timeout=min(2.0, left))
            if md.brokers:
                return md
        except KafkaException as e:
            last = e
        admin.poll(0)  # serves the error callback, where a refused login shows
        if watch.refused:
            raise AuthenticationError(
                f"the Kafka broker at {bootstrap} refused the login of "
                f"{_who(bootstrap, role, login)}: {watch.refused}; the local stack's credentials are in its folder "
                "(credentials.json beside state.json), or set EVOSTREAM_KAFKA_USERNAME and EVOSTREAM_KAFKA_PASSWORD"
            )
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    raise BrokerUnavailableError(
        f"no Kafka broker answers at {bootstrap} after {timeout_s:.0f} s"
        + (f" ({last.args[0].str() if last and isinstance(last.args[0], KafkaError) else last})" if last else "")
        + "; start the local one with `evostream stack up`, or point EVOSTREAM_BOOTSTRAP_SERVERS at yours"
        + (
            " (a broker that requires authentication closes the connections of a client without credentials: "
            "set EVOSTREAM_KAFKA_CREDENTIALS, or EVOSTREAM_KAFKA_USERNAME and EVOSTREAM_KAFKA_PASSWORD)"
            if login is None and security.credentials(bootstrap, role) is None
            else ""
        )
    )


def wait_for_broker(bootstrap: str, timeout_s: float, *, login: security.Credentials | None = None) -> None:
    """Block until a broker answers a metadata request."""
    cluster_metadata(bootstrap, timeout_s, login=login)


def _who(bootstrap: str, role: str | None, login: security.Credentials | None) -> str:
    found = login or security.credentials(bootstrap, role)
    return "a client without credentials" if found is None else f"principal {found.username!r}"


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    timeout_s: float = 30.0,
    replication: int | None = None,
    min_insync: int | None = None,
    login: security.Credentials | None = None,
) -> list[str]:
    """Create the topics of ``specs`` that do not exist yet; return the names created.

    Each gets ``replication`` replicas of which ``min_insync`` must acknowledge a write with acks=all; None leaves
    either to the broker's defaults (``default.replication.factor``, ``min.insync.replicas``): 1 on the local
    single-node stack, 3 and 2 on the local cluster, so every reader that creates the topics it needs gets the
    layout of the cluster it talks to."""
    specs = list(specs)
    existing = set(cluster_metadata(bootstrap, timeout_s, login=login).topics)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    admin = admin_client(bootstrap, login=login)
    isr = {} if min_insync is None else {"min.insync.replicas": str(min_insync)}
    futures = admin.create_topics(
        [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=-1 if replication is None else replication,
                config=s.config() | isr,
            )
            for s in missing
        ],
        request_timeout=timeout_s,
    )
    created: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as e:
            err = e.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another process created it between our look and our create
            raise StackError(f"cannot create topic {name}: {err}") from e
    return created


class PartitionEnds:
    """Where partitions end now (their high watermarks), asked in one ListOffsets request per broker through one
    long-lived admin client: for a reader that must know whether it has caught up. A consumer's own watermark query
    waits behind the fetch it has in flight on the same connection (up to ``fetch.wait.max.ms`` per partition)."""

    def __init__(self, bootstrap: str, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._admin = admin_client(bootstrap)

    def __call__(self, parts: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        asked = [TopicPartition(t, p) for t, p in parts]
        if not asked:
            return {}
        try:
            futures = self._admin.list_offsets({tp: latest for tp in asked}, request_timeout=self.timeout_s)
            return {(tp.topic, tp.partition): int(futures[tp].result(timeout=self.timeout_s).offset) for tp in asked}
        except (KafkaException, TimeoutError, concurrent.futures.TimeoutError) as e:
            raise BrokerUnavailableError(f"could not read where {len(asked)} partition(s) end: {e!r}") from e


def delete_topics(bootstrap: str, names: Iterable[str], timeout_s: float = 30.0) -> None:
    """Delete topics, ignoring the ones already gone."""
    admin = admin_client(bootstrap)
    for name, fut in admin.delete_topics(list(names), operation_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as e:
            err = e.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise StackError(f"cannot delete topic {name}: {err}") from e


def group_lags(bootstrap: str, groups: Iterable[str], timeout_s: float = 5.0) -> dict[str, dict[str, int]]:
    """Per consumer group, per topic it has committed offsets on: records not yet consumed (the partitions' ends
    minus the group's commits, summed); ``{}`` for a group with no commit yet."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    admin = admin_client(bootstrap)
    out: dict[str, dict[str, int]] = {}
    try:
        for group in groups:
            fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s)
            committed = [tp for tp in fut[group].result(timeout=timeout_s).topic_partitions or [] if tp.offset >= 0]
            if not committed:
                out[group] = {}
                continue
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            ends = admin.list_offsets(
                {TopicPartition(tp.topic, tp.partition): latest for tp in committed}, request_timeout=timeout_s
            )
            lags: dict[str, int] = {}
            for tp in committed:
                end = ends[TopicPartition(tp.topic, tp.partition)].result(timeout=timeout_s).offset
                lags[tp.topic] = lags.get(tp.topic, 0) + max(0, end - tp.offset)
            out[group] = lags
    except (KafkaException, TimeoutError, concurrent.futures.TimeoutError) as e:
        raise BrokerUnavailableError(f"could not read consumer group offsets at {bootstrap}: {e!r}") from e
    return out


def group_members(bootstrap: str, groups: Iterable[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Members of each consumer group now (0 for a group that is empty or unknown); BrokerUnavailableError when the
    broker cannot say."""
    groups = list(groups)
    admin = admin_client(bootstrap)  # held until the answers came: a client collected early never completes them
    try:
        futures = admin.describe_consumer_groups(groups, request_timeout=timeout_s)
        return {g: len(futures[g].result(timeout=timeout_s).members) for g in groups}
    except (KafkaException, TimeoutError, concurrent.futures.TimeoutError) as e:
        raise BrokerUnavailableError(f"could not describe consumer groups at {bootstrap}: {e!r}") from e


def replication_choice(configured: int | None, brokers: int) -> int:
    """Replicas for a topic a client creates itself (Faust's changelogs): the cluster's ``default.replication.factor``
    where it says one, as for the topics ``ensure_topics`` creates; else one per broker, three at most."""
    return configured if configured is not None and configured >= 1 else max(1, min(brokers, 3))


def default_replication(bootstrap: str, timeout_s: float = 10.0) -> int:
    """The replication factor of the cluster at ``bootstrap`` (``replication_choice`` of what a broker says)."""
    md = cluster_metadata(bootstrap, timeout_s)
    resource = ConfigResource(ConfigResource.Type.BROKER, str(min(md.brokers)))
    admin = admin_client(bootstrap)
    try:
        configs = admin.describe_configs([resource])[resource].result(timeout=timeout_s)
        configured: int | None = int(configs["default.replication.factor"].value)
    except (KafkaException, KeyError, ValueError, TimeoutError, concurrent.futures.TimeoutError):
        configured = None
    return replication_choice(configured, len(md.brokers))


def set_topic_configs(bootstrap: str, configs: Mapping[str, Mapping[str, str]], timeout_s: float = 30.0) -> list[str]:
    """Set each existing topic's ``configs`` (incrementally: its other settings stay); the names altered. A topic
    that does not exist yet is left to its creator."""
    existing = set(cluster_metadata(bootstrap, timeout_s).topics)
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in sorted(entries.items())
            ],
        )
        for name, entries in configs.items()
        if name in existing
    ]
    if not resources:
        return []
    admin = admin_client(bootstrap)
    altered: list[str] = []
    for resource, fut in admin.incremental_alter_configs(resources, request_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except (KafkaException, TimeoutError, concurrent.futures.TimeoutError) as e:
            raise StackError(f"cannot set the configs of topic {resource.name}: {e}") from e
        altered.append(resource.name)
    return altered
