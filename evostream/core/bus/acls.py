"""The local broker's principals and ACLs: who may do what, and setting them up as the broker's super user.

The rule is short on purpose. Every principal of ``security.PRINCIPALS`` may read, write and create topics, join
groups and use transactional ids, so a service never meets a refusal it did not deserve; what the issue's attacker
needed is taken away from all but one:

- only ``governance`` may Write (or Delete, Alter, AlterConfigs) the governance log's topic;
- only ``governance`` may use the governance writer's transactional id (another principal could fence the writer);
- no client principal may Alter the cluster, so none can change the ACLs or the SCRAM credentials (only the
  broker's super user can, and the launcher uses it for nothing else).

DENY wins over ALLOW in Kafka's authorizer, so the exceptions are DENY entries for every other principal.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._acl import AclBinding, AclBindingFilter, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType
from confluent_kafka.admin._scram import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from evostream.core.bus.admin import admin_client
from evostream.core.bus.security import GOVERNANCE_WRITER_ID, PRINCIPALS, SUPER_USER, CredentialsFile
from evostream.core.errors import StackError

WILDCARD = "*"
CLUSTER = "kafka-cluster"
SCRAM_ITERATIONS = 8192


@dataclass(frozen=True)
class Grant:
    """One ACL entry: ``principal`` is ``allow``-ed (or denied) ``operation`` on a resource named literally."""

    principal: str
    resource: ResourceType
    name: str
    operation: AclOperation
    allow: bool = True

    def binding(self) -> AclBinding:
        return AclBinding(
            self.resource,
            self.name,
            ResourcePatternType.LITERAL,
            f"User:{self.principal}",
            WILDCARD,
            self.operation,
            AclPermissionType.ALLOW if self.allow else AclPermissionType.DENY,
        )


def policy(governance_topics: Iterable[str], principals: Iterable[str] = PRINCIPALS) -> list[Grant]:
    """The ACLs of the module's rule, for ``principals`` and the governance log(s) ``governance_topics``."""
    grants: list[Grant] = []
    guarded = sorted(set(governance_topics))
    for p in principals:
        grants += [
            Grant(p, ResourceType.TOPIC, WILDCARD, AclOperation.ALL),
            Grant(p, ResourceType.GROUP, WILDCARD, AclOperation.ALL),
            Grant(p, ResourceType.TRANSACTIONAL_ID, WILDCARD, AclOperation.ALL),
            *(
                Grant(p, ResourceType.BROKER, CLUSTER, op)
                for op in (
                    AclOperation.CREATE,
                    AclOperation.DESCRIBE,
                    AclOperation.DESCRIBE_CONFIGS,
                    AclOperation.IDEMPOTENT_WRITE,
                )
            ),
        ]
        if p == "governance":
            continue
        for topic in guarded:
            grants += [
                Grant(p, ResourceType.TOPIC, topic, op, allow=False)
                for op in (AclOperation.WRITE, AclOperation.DELETE, AclOperation.ALTER, AclOperation.ALTER_CONFIGS)
            ]
        grants.append(Grant(p, ResourceType.TRANSACTIONAL_ID, GOVERNANCE_WRITER_ID, AclOperation.WRITE, allow=False))
    return grants


def secure(bootstrap: str, creds: CredentialsFile, governance_topics: Iterable[str], timeout_s: float) -> None:
    """As the super user: set every principal's SCRAM password and the ACLs of ``policy``; return once the broker
    enforces them (its authorizer lists them), so the launcher's next step, as ``admin``, is already allowed."""
    grants = policy(governance_topics, [p for p in PRINCIPALS if p in creds.passwords])
    admin = admin_client(bootstrap, login=creds.login(SUPER_USER))
    mechanism = ScramMechanism.SCRAM_SHA_512 if creds.mechanism == "SCRAM-SHA-512" else ScramMechanism.SCRAM_SHA_256
    info = ScramCredentialInfo(mechanism, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(p, info, creds.passwords[p].encode()) for p in PRINCIPALS
    ]
    try:
        for fut in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).values():
            fut.result(timeout=timeout_s)
        for fut in admin.create_acls([g.binding() for g in grants], request_timeout=timeout_s).values():
            fut.result(timeout=timeout_s)
        _await_enforced(admin, len(grants), time.monotonic() + timeout_s)
    except (KafkaException, concurrent.futures.TimeoutError) as e:
        raise StackError(f"could not set up the broker's principals and ACLs at {bootstrap}: {_said(e)}") from e


def _await_enforced(admin: AdminClient, expected: int, deadline: float) -> None:
    anything: Any = None  # a filter's None matches every name, principal and host
    everything = AclBindingFilter(
        ResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        anything,
        anything,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    while True:
        seen = len(admin.describe_acls(everything, request_timeout=5.0).result(timeout=5.0))
        if seen >= expected:
            return
        if time.monotonic() > deadline:
            raise StackError(f"the broker lists {seen} ACLs of the {expected} it was given")
        time.sleep(0.05)


def _said(e: BaseException) -> str:
    err = e.args[0] if e.args else None
    return err.str() if isinstance(err, KafkaError) else repr(e)
