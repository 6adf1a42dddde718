"""One typed settings object, read from the environment (prefix ``EVOSTREAM_``) and overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_PORT = 9092
"""Kafka's usual port: where the local broker listens, and where clients look when no stack runs and no address
is set (also when ``broker_port`` is 0, which asks the launcher for a free one)."""


def _home(*parts: str) -> Path:
    return Path.home().joinpath(*parts)


class Settings(BaseSettings):
    """Everything a process of evostream can be configured with."""

    model_config = SettingsConfigDict(env_prefix="EVOSTREAM_", extra="ignore")

    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers; unset means the local stack's address, else 127.0.0.1:9092.",
    )
    kafka_username: str | None = Field(
        default=None,
        description="The SASL principal every Kafka client of this process logs in as (with kafka_password); unset: "
        "the credentials file's principal for the client's role, or none for a broker without authentication.",
    )
    kafka_password: SecretStr | None = Field(default=None, description="kafka_username's password.")
    kafka_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        default="SCRAM-SHA-512", description="The SASL mechanism of kafka_username."
    )
    kafka_role: str = Field(
        default="admin",
        description="The principal of the credentials file that this process's Kafka clients log in as when they "
        "name none (each long-running command sets its own: inference, processors, evolution, sinks, api).",
    )
    kafka_credentials: Path | None = Field(
        default=None,
        description="A credentials file as the launcher writes it (stack_dir/credentials.json, mode 0600): one "
        "password per principal, each client logging in as its role's.",
    )
    cache_dir: Path = Field(default_factory=lambda: _home(".cache", "evostream"))
    stack_dir: Path = Field(
        default_factory=lambda: _home(".local", "state", "evostream", "stack"),
        description="Where the local broker keeps its data, logs, config and pid.",
    )
    processors_dir: Path = Field(
        default_factory=lambda: _home(".local", "state", "evostream", "processors"),
        description="The stream processors' local data (their tables are rebuilt from changelog topics).",
    )
    run_dir: Path = Field(
        default_factory=lambda: _home(".local", "state", "evostream", "run"),
        description="Where `evostream up` keeps each component's log (<name>.log) and state file (<name>.json), and "
        "its own (up.json): what `evostream status` reads.",
    )
    processors_app_id: str = Field(
        default="evostream-processors",
        description="The stream processors' consumer group and the prefix of their changelog topics.",
    )
    processors_handover: Literal["inline", "faust"] = Field(
        default="inline",
        description="How the processors' fetcher hands messages to the agents: inline (started in place, a task only "
        "for one that waits) or faust (Faust's own loop: four tasks per message).",
    )
    fault_kill_after: int = Field(
        default=0,
        ge=0,
        description="Test-only: a processors worker SIGKILLs itself mid-batch from the n-th folded step of "
        "fault_kill_model on (stream_processors/faults.py); 0 is off.",
    )
    fault_kill_model: str = Field(default="", description="Test-only: the model version fault_kill_after counts.")
    governance_dir: Path = Field(
        default_factory=lambda: _home(".local", "share", "evostream", "governance"),
        description="Actor keys (one file per actor, mode 0600) and the signed checkpoints of the governance log.",
    )
    governance_actor: str = Field(default="admin", description="The actor whose key signs governance commands.")
    governance_topic: str = Field(
        default="evo.governance", description="The governance log's topic (another one isolates a test or a tenant)."
    )
    artifacts_dir: Path = Field(
        default_factory=lambda: _home(".local", "share", "evostream", "artifacts"),
        description="The content-addressed store of model artifacts (sha256), verified on every load.",
    )
    evolution_actor: str = Field(
        default="evolution", description="The evolution consumer's actor (a proposer): its key signs its proposals."
    )
    rollout_actor: str = Field(
        default="controller",
        description="The rollout controller's actor (role controller): its key signs steps, aborts and completions.",
    )
    evolution_dir: Path = Field(
        default_factory=lambda: _home(".local", "share", "evostream", "evolution"),
        description="Where evolution cycles build, save and distil their candidates before storing them.",
    )
    evolution_every_s: int = Field(
        default=0, ge=0, description="The evolution consumer runs a cycle this often (seconds; 0: only on drift)."
    )
    sinks: str = Field(
        default="sqlite",
        description="The sinks `evostream sinks run` feeds: comma-separated names of evostream.sinks entry points.",
    )
    sinks_dir: Path = Field(
        default_factory=lambda: _home(".local", "share", "evostream", "sinks"),
        description="Each sink's own folder (<sinks_dir>/<name>): the SQLite sink's database, W&B's offline runs.",
    )
    profile_window_s: int = Field(default=60, ge=1, description="Tumbling profiling window, seconds of event time.")
    drift_reference_size: int = Field(default=200, ge=20, description="Completions in a model's reference window.")
    drift_window_size: int = Field(default=50, ge=20, description="Completions per compared drift window.")
    risk_replay_horizon_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long the risk agent keeps a trace's state after its last event, to recognise a replay "
        "after a restart; then it is dropped, with a tombstone on the changelog.",
    )
    serve_max_batch: int = Field(default=8, ge=1, description="Requests the service generates together.")
    serve_sketch_dim: int = Field(
        default=32,
        ge=0,
        le=1024,
        description="Numbers per layer of the hidden-state sketch each step carries for a learned risk probe "
        "(producers/sketch.py; two layers); 0 sends none.",
    )
    serve_max_wait_ms: int = Field(default=5, ge=0, description="How long the service waits to fill a batch.")
    step_block_window_ms: int = Field(
        default=200,
        ge=0,
        le=5_000,
        description="How long a trace's steps wait in the inference producer for more of its steps to join their "
        "step block (the stream processors' input, evo.step-blocks): a full block, a step with non-finite values "
        "and the service's commit end the wait. Longer: fewer, larger blocks, cheaper to process; alerts other than "
        "non-finite ones wait as long.",
    )
    step_block_max_steps: int = Field(default=64, ge=1, le=1024, description="Steps one step block holds at most.")
    serve_batching: Literal["continuous", "static"] = Field(
        default="static",
        description="continuous: greedy requests join the running batch between steps and leave it when done; "
        "static: each batch runs to completion before the next is read.",
    )
    serve_admit_min: int = Field(
        default=0,
        ge=0,
        description="Continuous batching: newcomers join the running batch once this many slots are free (0: half "
        "the batch), or once the oldest has waited 20 ms.",
    )
    serve_torch_threads: int = Field(
        default=0,
        ge=0,
        description="Torch threads for a model served on the CPU; 0: one less than the CPUs (at least 1), leaving a "
        "core to the step emitter process.",
    )
    route: str = Field(
        default="",
        description="The route the inference service serves (its policy and independence level follow the governance "
        "log's route/<name>); empty: no routing, the served model answers everything.",
    )
    route_reference: str = Field(
        default="",
        description="The route's stronger target: governed:<version> (a registered version, loaded beside the self "
        "model) or the base URL of an OpenAI-compatible server (http://host:port/v1, optionally #<model name>).",
    )
    route_timeout_s: float = Field(default=60.0, gt=0, description="How long one call to an HTTP reference may take.")
    route_prices: Path | None = Field(
        default=None,
        description="The price table (JSON: version pattern -> prompt_per_1k and output_per_1k US dollars); unset: "
        "every answer costs 0.",
    )
    tenant_limits: Path | None = Field(
        default=None,
        description="Per-tenant budgets and rate limits (JSON: tenant or * -> tokens_per_day, cost_per_day_usd, "
        "requests_per_s, burst); unset: no limits.",
    )
    cache_similarity: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="The response cache answers a greedy request whose prompt embedding has at least this cosine "
        "similarity with an earlier one of the same tenant and the same letters and digits (case kept); 1 (the "
        "default) keeps only exact repeats, 0 turns the cache off.",
    )
    cache_ttl_s: float = Field(default=3600.0, ge=0, description="How long a cached answer serves (0: cache off).")
    cache_max_entries: int = Field(default=10_000, ge=0, description="Answers the cache keeps per tenant, newest.")
    kafka_version: str = "4.1.2"
    log4j_version: str = "2.24.3"
    broker_port: int = Field(default=DEFAULT_BROKER_PORT, ge=0, le=65535, description="0 picks a free port.")
    controller_port: int = Field(default=9093, ge=0, le=65535, description="0 picks a free port.")
    broker_heap: str = "1g"
    ready_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    maven_offline: bool = False
    maven_repo_local: Path | None = None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with the given non-None values (CLI flags) taking precedence."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
