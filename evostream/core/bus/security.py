"""Which principal a Kafka client authenticates as, and with what: every client the project builds asks here.

The local broker refuses clients without credentials (SASL/SCRAM-SHA-512 over SASL_PLAINTEXT on loopback) and gives
each service its own principal (``PRINCIPALS``); its ACLs (``bus/acls.py``) let only ``governance`` write the
governance log. The launcher writes every principal's random password to one file, mode 0600, beside the stack's
``state.json`` (``CredentialsFile``). A client is configured, first match wins, from:

1. ``EVOSTREAM_KAFKA_USERNAME`` / ``EVOSTREAM_KAFKA_PASSWORD`` (/ ``_MECHANISM``): one principal for every client of
   the process, whatever its role (a deployment that hands each service its own secret);
2. ``EVOSTREAM_KAFKA_CREDENTIALS``: a credentials file, the principal chosen by the client's role;
3. the credentials file of a local stack or cluster this process started or found running, or of the stack or
   cluster in ``EVOSTREAM_STACK_DIR``, when it serves the client's bootstrap address;
4. nothing: a plaintext client, for an external broker without authentication.

A file that names the bootstrap address it was written for (the launcher's do) is used only for that address, so a
client of another, plain broker is never sent credentials it would refuse.

The role: the one the client names, else the governance writer's for its transactional id, else the process's
(``EVOSTREAM_KAFKA_ROLE``, which each long-running command sets with ``act_as``), else ``admin`` (one-shot commands
and tests)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evostream.core.errors import StackError
from evostream.core.settings import Settings

Mechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]

PRINCIPALS: dict[str, str] = {
    "admin": "the launcher, one-shot commands and tests: creates topics; the default role",
    "governance": "the governance log's writer: the only principal that may write evo.governance",
    "inference": "`evostream serve`: requests, steps, completions",
    "processors": "`evostream process` (Faust): risk, alerts, drift, profiles and their changelogs",
    "evolution": "`evostream evolution run`: reads drift, builds candidates",
    "sinks": "`evostream sinks run`: reads the reports into SQLite, Prometheus and the other sinks",
    "api": "`evostream api`: the HTTP API and dashboard",
}
"""Every client principal of the local stack and what it is for."""

SUPER_USER = "broker"
"""The broker's own principal (inter-broker and controller traffic, over SASL/PLAIN), and the launcher's when it
sets up the other principals and the ACLs. Its password is in the credentials file; no service uses it."""

GOVERNANCE_WRITER_ID = "evostream-governance-writer"
"""The governance log writer's transactional id (``consumers/governance/log.py`` WRITER_ID): a transactional producer
with this id is the governance writer, and acts as ``governance``."""

CLIENT_MECHANISM: Mechanism = "SCRAM-SHA-512"
CREDENTIALS_FILE = "credentials.json"

_known_files: set[Path] = set()


@dataclass(frozen=True)
class Credentials:
    """One principal's SASL login."""

    username: str
    password: str = field(repr=False)
    mechanism: Mechanism = CLIENT_MECHANISM

    def librdkafka(self) -> dict[str, Any]:
        """The confluent-kafka (librdkafka) configuration that logs in with these."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password,
        }

    def aiokafka(self) -> dict[str, Any]:
        """The aiokafka client arguments that log in with these (Faust's clients take ``faust.SASLCredentials``)."""
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }


@dataclass(frozen=True)
class CredentialsFile:
    """A stack's principals and their passwords; ``bootstrap`` is the address they are good for ("" = any)."""

    passwords: dict[str, str] = field(repr=False)
    bootstrap: str = ""
    mechanism: Mechanism = CLIENT_MECHANISM

    @classmethod
    def load(cls, path: Path) -> CredentialsFile:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(dict(raw["users"]), str(raw.get("bootstrap", "")), raw.get("mechanism", CLIENT_MECHANISM))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StackError(f"cannot read the Kafka credentials file {path}: {e}") from e

    @classmethod
    def ensure(cls, path: Path, bootstrap: str) -> CredentialsFile:
        """The file at ``path`` with a password for every principal (new ones random), bound to ``bootstrap``;
        written with mode 0600 (created so, never readable by others even for a moment)."""
        old = cls.load(path) if path.exists() else cls({})
        users = {name: old.passwords.get(name) or secrets.token_urlsafe(24) for name in (SUPER_USER, *PRINCIPALS)}
        new = cls(users, bootstrap, old.mechanism)
        if new != old:
            new.save(path)
        return new

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        body = {"bootstrap": self.bootstrap, "mechanism": self.mechanism, "users": self.passwords}
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2)
        tmp.replace(path)

    def serves(self, bootstrap: str) -> bool:
        """Whether a client of ``bootstrap`` logs in with this file: it names no address, or every one the client
        names (a client of one node of a local cluster too)."""
        return not self.bootstrap or _addresses(bootstrap) <= _addresses(self.bootstrap)

    def login(self, role: str) -> Credentials:
        """The credentials of ``role`` (the super user logs in with PLAIN, the broker's own mechanism)."""
        password = self.passwords.get(role)
        if password is None:
            raise StackError(
                f"the Kafka credentials file has no principal {role!r}; it has {', '.join(sorted(self.passwords))}"
            )
        return Credentials(role, password, "PLAIN" if role == SUPER_USER else self.mechanism)


def stack_credentials_path(stack_dir: Path) -> Path:
    """Where the launcher keeps a stack's credentials: beside its ``state.json``."""
    return stack_dir / CREDENTIALS_FILE


def remember(path: Path) -> None:
    """Use the credentials file at ``path`` for the clients of this process that connect to the address it names
    (the launcher calls this for the stack it starts or finds running)."""
    _known_files.add(path)


def act_as(role: str) -> None:
    """Make ``role`` the principal of every client of this process, and of the processes it starts, that names none
    (a long-running command calls this once: the environment is how its emitter or worker processes inherit it)."""
    if role not in PRINCIPALS:
        raise StackError(f"unknown Kafka principal {role!r}; known: {', '.join(PRINCIPALS)}")
    os.environ["EVOSTREAM_KAFKA_ROLE"] = role


def role_of(role: str | None, transactional_id: str | None, settings: Settings) -> str:
    """The role a client acts in: the one it names, the governance writer's for its transactional id, the process's."""
    if role is not None:
        return role
    if transactional_id == GOVERNANCE_WRITER_ID:
        return "governance"
    return settings.kafka_role


def credentials(
    bootstrap: str, role: str | None = None, *, transactional_id: str | None = None, settings: Settings | None = None
) -> Credentials | None:
    """The login of a client of ``bootstrap`` acting as ``role`` (see the module's docstring); None: plaintext."""
    s = settings or Settings()
    if s.kafka_username:
        if s.kafka_password is None:
            raise StackError("EVOSTREAM_KAFKA_USERNAME is set but EVOSTREAM_KAFKA_PASSWORD is not")
        return Credentials(s.kafka_username, s.kafka_password.get_secret_value(), s.kafka_mechanism)
    found = _credentials_file(bootstrap, s)
    return None if found is None else found.login(role_of(role, transactional_id, s))


def _credentials_file(bootstrap: str, s: Settings) -> CredentialsFile | None:
    if s.kafka_credentials is not None:
        explicit = CredentialsFile.load(s.kafka_credentials)
        if explicit.serves(bootstrap):
            return explicit
    # the local node's file, and the local cluster's (core/stack/cluster.py keeps it in <stack_dir>/cluster)
    local = (stack_credentials_path(s.stack_dir), stack_credentials_path(s.stack_dir / "cluster"))
    for path in (*sorted(_known_files), *local):
        if path.exists():
            candidate = CredentialsFile.load(path)
            if candidate.bootstrap and candidate.serves(bootstrap):
                return candidate
    return None


def client_config(bootstrap: str, role: str | None = None, *, transactional_id: str | None = None) -> dict[str, Any]:
    """librdkafka settings that authenticate a client of ``bootstrap`` as ``role``; empty for a plain broker."""
    found = credentials(bootstrap, role, transactional_id=transactional_id)
    return {} if found is None else found.librdkafka()


def refusal(login: Credentials | None, doing: str, what: str) -> str:
    """Why the broker refused ``doing`` ``what``, in words that say what to do about it."""
    who = "a client without credentials" if login is None else f"principal {login.username!r}"
    hint = (
        " (only the governance writer's principal, `governance`, may write the governance log)"
        if doing == "write to" and login is not None and login.username != "governance"
        else ""
    )
    return f"the broker's ACLs do not allow {who} to {doing} {what}{hint}"


def _addresses(bootstrap: str) -> frozenset[str]:
    return frozenset(a.strip().replace("localhost:", "127.0.0.1:") for a in bootstrap.split(",") if a.strip())
