"""The Faust app. Agents decode, call the pure objects (``tracker``, ``risk``), store state, publish; nothing else.

Topics: reads evo.step-blocks (StepBlocks: consecutive steps of one trace that the producer's
emitter sent together) and evo.completions (repartitioned by trace_id, so a trace's completion meets its steps'
state on the same partition, and by model version for drift), writes evo.risk, evo.alerts, evo.drift and evo.dlq.
The per-step records on evo.steps are for the readers that need each token as it comes (the API's streams, the
views); the processors never read them: one record and one decode per block, and each block's steps folded at once
with numpy, is what lets one worker keep up with a fleet (docs/benchmarks.md#stream-processors).
Blocks are read once, by the risk agent, which also computes profiling's share of each block where the block is
(``profiling/partial.py``: sums, counts and token paths, on whichever worker holds the trace's partition) and sends
them per model and source partition on the internal topic ``<app_id>-profile-deltas``, keyed by model. The
profiling agent only merges those partials, so a hot model's profile costs its one partition little, whatever the
step rate; it skips a block it merged already (by source partition and offset), so a delta sent again by a replay
counts nothing twice.
State: the tables ``risk-traces``, ``drift-models`` and ``profile-models``, each backed by its changelog topic; a
restarted worker rebuilds them from there.

Delivery: at-least-once. An agent sends a batch's outputs, waits until the broker has acknowledged them, then writes
the batch's state; the input offsets are committed later still. Agents that write the same table (risk: blocks and
completions; profiles: deltas, neuron counts and the idle-window timer) hold its lock from a batch's first read to its
last write, so no agent overwrites what another folded meanwhile. A restart replays from the last committed offset
and skips every event the stored state already includes (counted as ``duplicates_*`` in the stats line). Outputs
sent after the last state write that reached the changelog are sent again, once, by the replay (the kill -9 test
pins exactly which).

Fault injection for the kill -9 test lives in ``faults.py`` (``KillSwitch``), configured through Settings.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import threading
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import faust

from evostream.core.bus.admin import default_replication, set_topic_configs
from evostream.core.clock import now_us
from evostream.core.errors import DecodeError, EvoError, FoldError, PolicyError, StackError
from evostream.core.settings import Settings
from evostream.schemas.blocks import StepColumns
from evostream.schemas.catalog import ALERTS, CATALOG, COMPLETIONS, DLQ, DRIFT, NEURONS, PROFILES, RISK, STEP_BLOCKS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import dead_letter
from evostream.stream_processors.checks import check_block, check_completion, check_neurons
from evostream.stream_processors.drift.policy import load_drift_policies
from evostream.stream_processors.drift.tracker import DriftTracker, DriftWindows
from evostream.stream_processors.drift.tracker import table_name as drift_table
from evostream.stream_processors.faults import KillSwitch
from evostream.stream_processors.fold import Fold
from evostream.stream_processors.profiling.delta import Partials, decode_partials, partial_deltas
from evostream.stream_processors.profiling.partial import BlockPartial, block_partial
from evostream.stream_processors.profiling.tracker import ProfileTracker
from evostream.stream_processors.profiling.tracker import table_name as profile_table
from evostream.stream_processors.profiling.window import ProfilePolicy, window_of
from evostream.stream_processors.risk.policy import RiskPolicy, load_policies
from evostream.stream_processors.risk.tracker import TABLE as RISK_TABLE
from evostream.stream_processors.risk.tracker import RiskTracker, StreamProgress, expired
from evostream.stream_processors.transport import App, sasl_credentials

log = logging.getLogger(__name__)

STEP_PARTITIONS = next(t.partitions for t in CATALOG if t.name == STEP_BLOCKS)
CHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "Completion": check_completion,
    "NeuronCounts": check_neurons,
}
"""What a decoded record must pass before an agent folds it (``checks.py``): else it is dead-lettered."""


def changelog_config(replay_horizon_s: float) -> dict[str, str]:
    """Broker settings for every table's changelog topic, so that the log cleaner really compacts it.

    A changelog is compacted (Faust's ``cleanup.policy``), but the cleaner never touches the active segment, and a
    segment rolls after 1 GiB or 7 days by default: the tombstones the replay horizon writes and the states that
    later writes replaced would stay, and a restarted worker would read them all. Segments roll every quarter of
    the horizon here (5 s at least, 1 hour at most), the cleaner starts at 10% of replaced records, and a
    tombstone stays one segment time for a worker that is restoring while it is cleaned."""
    segment_ms = int(min(max(replay_horizon_s / 4, 5.0), 3600.0) * 1000)
    return {
        "segment.ms": str(segment_ms),
        "min.cleanable.dirty.ratio": "0.1",
        "delete.retention.ms": str(segment_ms),
    }


class Processors:
    """The app and its agents, built for one broker."""

    def __init__(
        self,
        bootstrap: str,
        datadir: Path,
        policies: Mapping[str, RiskPolicy],
        app_id: str,
        drift: DriftTracker,
        profile: ProfileTracker,
        handover: str = "inline",
        faults: KillSwitch | None = None,
        replay_horizon_s: float = 3600.0,
        replication: int = 1,
    ) -> None:
        _check_reach(policies, profile.policy)
        self.tracker = RiskTracker(policies)
        self.replay_horizon_us = int(replay_horizon_s * 1_000_000)
        self.progress = StreamProgress(("StepBlock", "Completion"))  # what the horizon is measured against
        self.drift_tracker = drift
        self.profile_tracker = profile
        names = (
            "StepBlock",
            "Completion",
            "RiskReport",
            "RiskAlert",
            "DeadLetter",
            "DriftReport",
            "ProfileSnapshot",
            "NeuronCounts",
            "ProfileDelta",
        )
        self.codecs = {n: RecordCodec(n) for n in names}
        self.stats = {
            "steps": 0,
            "completions": 0,
            "drift_completions": 0,
            "profile_steps": 0,
            "duplicates_risk": 0,
            "duplicates_drift": 0,
            "duplicates_profile": 0,
            "dead_letters": 0,
            "evicted_risk": 0,
            "alerts": 0,
            "drift": 0,
            "profiles": 0,
            "gc_full": 0,
            "gc_longest_ms": 0,
        }
        self._gc_started = 0.0
        self.faults = faults or KillSwitch(0, "")
        self._metadata_ready: set[str] = set()
        self._risk_lock = asyncio.Lock()  # the step and the completion agent write the risk table
        self._drift_fold = threading.Lock()  # the drift tracker's detectors are used by one fold at a time
        self._profile_lock = asyncio.Lock()  # the step agent, the neuron agent and the window timer write profiles
        # Faust's app, with the inline hand-over of fetched messages unless told otherwise (see transport.py)
        app = App(
            app_id,
            handover=handover,
            broker=f"kafka://{bootstrap}",
            broker_credentials=sasl_credentials(bootstrap),
            store="memory://",
            datadir=str(datadir),
            topic_partitions=STEP_PARTITIONS,
            # the changelogs, repartition and deltas topics Faust creates: as many replicas as the cluster gives
            # its own topics (default_replication), so acks=all meets min.insync.replicas on a cluster and a node
            # lost loses no changelog partition
            topic_replication_factor=replication,
            web_enabled=False,
            producer_acks=-1,
            broker_commit_every=1000 if not self.faults.armed else 1 << 40,
            broker_commit_interval=1.0 if not self.faults.armed else 1e6,
            table_standby_replicas=0,
            # a first start creates the internal deltas topic while the consumer joins with metadata fetched
            # before it: the assignment ignored the topic ("Ignoring missing topic"), and profiling folded nothing
            # until the next metadata refresh, 5 minutes later by default; the refresh that finds it rebalances
            consumer_metadata_max_age_ms=10_000,
            consumer_auto_offset_reset="earliest",
            # take_events acks a batch only when the next one starts: a stop that waited for every ack could wait
            # forever on the last batch (it did, in the benchmark). Unacked events are replayed and skipped.
            stream_wait_empty=False,
        )
        self.app = app
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.blocks = app.topic(STEP_BLOCKS, **raw)
        self.completions = app.topic(COMPLETIONS, **raw)
        self.risk = app.topic(RISK, **raw)
        self.alerts = app.topic(ALERTS, **raw)
        self.dlq = app.topic(DLQ, **raw)
        self.drift = app.topic(DRIFT, **raw)
        self.profiles = app.topic(PROFILES, **raw)
        self.neurons = app.topic(NEURONS, **raw)
        self.profile_deltas = app.topic(f"{app_id}-profile-deltas", internal=True, partitions=STEP_PARTITIONS, **raw)
        changelogs = self.changelogs = changelog_config(replay_horizon_s)
        self.table = app.Table(
            RISK_TABLE,
            default=None,
            partitions=STEP_PARTITIONS,
            key_type=bytes,  # raw key bytes: the changelog partition is murmur2(key), as for evo.steps
            use_partitioner=True,  # so a state lands on its trace's partition even when written from a batch
            help="risk state per trace, with the input offsets it includes",
            extra_topic_configs=changelogs,
        )
        self.drift_table = app.Table(
            drift_table(drift.windows),
            default=None,
            partitions=STEP_PARTITIONS,
            key_type=bytes,
            use_partitioner=True,  # keyed by model version, like the repartitioned stream that updates it
            help="reference and current drift window per model version",
            extra_topic_configs=changelogs,
        )
        app.agent(self.blocks, name="risk-blocks")(self._on_blocks)
        app.agent(self.completions, name="risk-completions")(self._on_completions)
        self.profile_table = app.Table(
            profile_table(profile.policy),
            default=None,
            partitions=STEP_PARTITIONS,
            key_type=bytes,
            use_partitioner=True,
            help="the open profiling window per model version",
            extra_topic_configs=changelogs,
        )
        app.agent(self.completions, name="drift-completions")(self._on_drift)
        app.agent(self.profile_deltas, name="profile-deltas")(self._on_profile)
        app.agent(self.neurons, name="profile-neurons")(self._on_neurons)
        app.timer(interval=self.profile_tracker.policy.grace_s)(self._close_idle_windows)
        app.timer(interval=min(60.0, replay_horizon_s / 4))(self._evict_finished)
        app.timer(interval=60.0)(self._log_stats)
        app.task(self._log_policies)
        app.task(self._freeze_startup_heap)
        app.task(self._watch_gc)
        app.task(self._dump_tasks_on_signal)
        app.on_before_shutdown.connect(self._log_stats_at_shutdown)  # type: ignore[arg-type]  # mode's stub rejects bound coroutine methods

    async def _on_blocks(self, stream: faust.StreamT[bytes]) -> None:
        # Batches of up to 500 step blocks (each some consecutive steps of one trace), or
        # whatever arrived within 20 ms: a trace's state is written to the changelog once per batch; alerts are sent
        # as soon as their block is folded.
        async for events in stream.take_events(500, within=0.02):  # type: ignore[attr-defined]
            await self._fold_blocks(events)

    async def _on_completions(self, stream: faust.StreamT[bytes]) -> None:
        by_trace = stream.group_by(lambda value: self._trace_of(value), name="completions-by-trace")
        async for events in by_trace.take_events(1000, within=0.02):  # type: ignore[attr-defined]
            await self._fold_completions(events)

    def _take_offers(self) -> None:
        for family in self.tracker.take_offers():  # a probe governance promoted serves from this batch on
            served = self.tracker.probes.get(family)
            log.warning("risk: %s is now judged by %s", family, served.version if served else "its hand-set policy")

    async def _fold_blocks(self, events: list[faust.EventT[bytes]]) -> None:
        """Fold a batch of step blocks into the risk table, each block's steps at once (``RiskTracker.on_block``):
        outputs first (reports, alerts, and profiling's share of the batch), acknowledged by the broker, then the
        batch's state. The block and the completion agent both write a trace's state, so a batch holds the table's
        lock from its first read to its last write (without it, a completion folded while a step batch awaited its
        sends was overwritten by that batch: its FINAL never came)."""
        async with self._risk_lock:
            self._take_offers()
            touched: dict[bytes, dict[str, Any]] = {}
            acks: list[Awaitable[Any]] = []
            shares: dict[tuple[str, int], list[tuple[int, BlockPartial]]] = {}
            self.faults.start_batch()
            for done, event in enumerate(events, 1):
                cols = await self._block(event, acks)
                if cols is None:
                    continue
                self.progress.fold("StepBlock", int(cols.emitted_at_us.max()))
                key, offset = cols.trace_id.encode(), event.message.offset
                state = touched[key] if key in touched else self.table.get(key)
                window = window_of(int(cols.emitted_at_us[0]), self.profile_tracker.policy.window_s)
                try:
                    out = self.tracker.on_block(state, cols, offset, now_us())
                    prior = (state or {}).get("risk", {}).get("tokens", [])
                    counted = (state or {}).get("profile_window") == window
                    # profiling counts the steps risk folded: not those of a replay, nor a block's steps past the
                    # last one its trace's completion counts (the fold's duplicates are the block's tail)
                    folded = len(cols) - out.duplicates
                    policy = self.profile_tracker.policy
                    share = block_partial(cols.head(folded), prior, counted, policy) if folded > 0 else None
                except Exception as e:  # a block no check foresaw: this one, not the batch, is dead-lettered
                    log.exception("risk: the block %s@%d of %s failed", event.message.topic, offset, cols.trace_id)
                    out = Fold(dict(state or {}), rejected={offset: _as_evo(e)})
                if offset in out.rejected:  # steps that do not fit their trace: the block is dead-lettered whole
                    acks.append(await self._dead_letter(event, _reason(out.rejected[offset], "risk")))
                    continue
                if not await self._publish(key, out, "steps", acks, len(cols)):
                    continue  # folded before (a replay): so was its share of profiling
                if share is not None:
                    shares.setdefault((cols.model_version, event.message.partition), []).append((offset, share))
                out.state["profile_window"] = window
                touched[key] = out.state
                if self.faults.watches(cols.model_version):
                    await self._maybe_fault(out, len(cols) - out.duplicates, done, len(events))
            for (model, partition), rows in shares.items():  # acknowledged like the reports, before the state
                for delta in partial_deltas(model, partition, rows):
                    value = self.codecs["ProfileDelta"].encode(delta)
                    acks.append(await self.profile_deltas.send(key=model.encode(), value=value))
            await self._write(self.table, touched, acks)

    async def _block(self, event: faust.EventT[bytes], acks: list[Awaitable[Any]]) -> StepColumns | None:
        """The step block's columns, or None once it is dead-lettered (undecodable, or columns that disagree with
        its counts and shape: they would stop every agent that unpacks them)."""
        rec = await self._decode("StepBlock", event, acks)
        if rec is None:
            return None
        try:
            return check_block(rec)
        except DecodeError as e:
            acks.append(await self._dead_letter(event, _reason(e, "risk")))
            return None

    async def _fold_completions(self, events: list[faust.EventT[bytes]]) -> None:
        """Fold a batch of completions into the risk table (under its lock, like a batch of blocks): a FINAL once
        the trace's steps have all been folded."""
        async with self._risk_lock:
            self._take_offers()
            touched: dict[bytes, dict[str, Any]] = {}
            acks: list[Awaitable[Any]] = []
            for event in events:
                rec = await self._decode("Completion", event, acks)
                if rec is None:
                    continue
                self.progress.fold("Completion", int(rec["completed_at_us"]))
                key = str(rec["trace_id"]).encode()
                state = touched[key] if key in touched else self.table.get(key)
                try:
                    out = self.tracker.on_completion(state, rec, event.message.offset, now_us())
                except Exception as e:  # this completion, not the batch: dead-lettered, the others go on
                    acks.append(await self._dead_letter(event, _reason(e, "risk")))
                    continue
                if await self._publish(key, out, "completions", acks, 1):
                    touched[key] = out.state
            await self._write(self.table, touched, acks)

    async def _write(self, table: Any, states: Mapping[bytes, dict[str, Any]], acks: list[Awaitable[Any]]) -> None:
        """Store a batch's states once the broker has acknowledged every output the batch sent: a state on the
        changelog then never stands for an output that a crash lost (the replay would skip its input)."""
        await asyncio.gather(*acks)
        if not states:
            return
        await self._changelog_ready(table)
        for key, state in states.items():
            table[key] = state

    async def _on_drift(self, stream: faust.StreamT[bytes]) -> None:
        by_model = stream.group_by(lambda value: self._field_of(value, "model_version"), name="completions-by-model")
        async for events in by_model.take_events(1000, within=0.02):  # type: ignore[attr-defined]
            touched: dict[bytes, dict[str, Any]] = {}
            acks: list[Awaitable[Any]] = []
            read: list[tuple[faust.EventT[bytes], dict[str, Any]]] = []
            for event in events:
                try:
                    rec = self.codecs["Completion"].decode(bytes(event.value or b""))
                    check_completion(rec)
                except DecodeError:
                    continue  # the risk agent dead-letters undecodable and inconsistent completions
                read.append((event, rec))
            states = {m: self.drift_table.get(m) for m in {str(rec["model_version"]).encode() for _, rec in read}}
            # a window's tests (the MMD permutation null above all) take milliseconds of numpy: folded in a thread,
            # so the event loop goes on with blocks and alerts meanwhile (this agent alone writes the drift table)
            folded = await asyncio.to_thread(self._fold_drift, read, states)
            for (event, rec), out in zip(read, folded, strict=True):
                key = str(rec["model_version"]).encode()
                if isinstance(out, Exception):  # e.g. an embedding of another size than its windows': this one only
                    acks.append(await self._dead_letter(event, _reason(out, "drift")))
                    continue
                if out.duplicates:
                    self.stats["duplicates_drift"] += out.duplicates
                    continue
                self.stats["drift_completions"] += 1
                for report in out.reports:
                    self.stats["drift"] += 1
                    acks.append(await self.drift.send(key=key, value=self.codecs["DriftReport"].encode(report)))
                touched[key] = out.state
            await self._write(self.drift_table, touched, acks)

    def _fold_drift(
        self, read: list[tuple[faust.EventT[bytes], dict[str, Any]]], states: dict[bytes, dict[str, Any] | None]
    ) -> list[Fold | Exception]:
        """Each completion folded into its model's drift state in turn (``states`` moves along): its Fold, or the
        error that refuses it."""
        out: list[Fold | Exception] = []
        with self._drift_fold:  # a fold left running by a cancelled agent (a rebalance) finishes before the next
            self._fold_drift_batch(read, states, out)
        return out

    def _fold_drift_batch(
        self,
        read: list[tuple[faust.EventT[bytes], dict[str, Any]]],
        states: dict[bytes, dict[str, Any] | None],
        out: list[Fold | Exception],
    ) -> None:
        for event, rec in read:
            key = str(rec["model_version"]).encode()
            try:
                fold = self.drift_tracker.on_completion(states[key], rec, event.message.offset, now_us())
            except Exception as e:
                out.append(e)
                continue
            if not fold.duplicates:
                states[key] = fold.state
            out.append(fold)

    async def _on_profile(self, stream: faust.StreamT[bytes]) -> None:
        # ProfileDeltas, one per model, source partition and block batch, keyed by model: one row per block
        async for events in stream.take_events(50, within=0.05):  # type: ignore[attr-defined]
            per_model: dict[str, list[tuple[Partials, faust.EventT[bytes]]]] = {}
            acks: list[Awaitable[Any]] = []
            for event in events:
                rec = await self._decode("ProfileDelta", event, acks)
                if rec is None:
                    continue
                try:
                    parts = decode_partials(rec)
                except DecodeError as e:
                    acks.append(await self._dead_letter(event, _reason(e, "profiling")))
                    continue
                per_model.setdefault(parts.model_version, []).append((parts, event))
            async with self._profile_lock:  # the neuron agent and the idle-window timer write the same keys
                touched: dict[bytes, dict[str, Any]] = {}
                for model, batches in per_model.items():
                    key = model.encode()
                    state: dict[str, Any] | None = self.profile_table.get(key)
                    for parts, event in batches:
                        try:
                            out = self.profile_tracker.on_partials(model, state, parts, now_us())
                        except Exception as e:  # blocks of another shape than the model's window: this delta only
                            acks.append(await self._dead_letter(event, _reason(e, "profiling")))
                            continue
                        self.stats["duplicates_profile"] += out.duplicates
                        self.stats["profile_steps"] += int(parts.steps.sum()) - out.duplicates
                        acks += await self._publish_profiles(model, out.reports)
                        state = out.state
                    if state is not None:
                        touched[key] = state
                await self._write(self.profile_table, touched, acks)

    async def _on_neurons(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            rec = await self._decode("NeuronCounts", event)
            if rec is None:
                continue
            model = str(rec["model_version"])
            key = model.encode()
            async with self._profile_lock:
                try:
                    out = self.profile_tracker.on_neurons(model, self.profile_table.get(key), rec, now_us())
                except Exception as e:  # counts of another shape than the open window's
                    await self._dead_letter(event, _reason(e, "profiling"))
                    continue
                if out.duplicates:
                    self.stats["duplicates_profile"] += out.duplicates
                    continue
                acks = await self._publish_profiles(model, out.reports)
                await self._write(self.profile_table, {key: out.state}, acks)

    async def _changelog_ready(self, table: Any) -> None:
        """The tables place each write by key (use_partitioner), which aiokafka computes from the producer's
        metadata and fails on ("'NoneType' object is not iterable") for a topic its metadata does not track: that
        crashed the agent, whose restart committed offsets early. Before the first write to each changelog, the
        producer tracks that topic and waits for its metadata."""
        topic = table.changelog_topic.get_topic_name()
        if topic not in self._metadata_ready:
            producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
            await producer.client.add_topic(topic)  # tracked: every later metadata refresh keeps it
            await producer.partitions_for(topic)  # waits until the metadata holds it
            self._metadata_ready.add(topic)

    async def _freeze_startup_heap(self) -> None:
        """Move what the worker holds once started (Faust, the modules, numpy, the policies) out of the collector's
        reach (``gc.freeze``): every full collection scanned all of it again, and held the event loop, with the
        alerts waiting behind it, about 100 ms a time (``gc_longest_ms``; docs/benchmarks.md#stream-processors)."""
        gc.collect()
        gc.freeze()

    async def _watch_gc(self) -> None:
        """A full collection holds the event loop, alerts too: how long is logged, from start to shutdown (a
        callback left on ``gc.callbacks`` would keep these processors alive, and counting, after they stopped)."""
        if self._time_gc not in gc.callbacks:
            gc.callbacks.append(self._time_gc)

    def _time_gc(self, phase: str, info: Mapping[str, Any]) -> None:
        """gc's callback: counts the full collections and keeps the longest pause of any (``gc_longest_ms``)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause_ms = int((time.perf_counter() - self._gc_started) * 1000)
        self.stats["gc_full"] += info.get("generation") == 2
        self.stats["gc_longest_ms"] = max(self.stats["gc_longest_ms"], pause_ms)

    async def _log_stats(self) -> None:
        """What the agents did since start: events folded, replays skipped, outputs and dead letters."""
        log.info("processors: %s", ", ".join(f"{k} {v}" for k, v in self.stats.items()))

    async def _log_stats_at_shutdown(self, _sender: Any, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        if self._time_gc in gc.callbacks:
            gc.callbacks.remove(self._time_gc)
        await self._log_stats()

    async def _log_policies(self) -> None:
        """Which policy files the worker judges with (an operator, and the benchmark, can check)."""
        risk = ", ".join(f"{family} -> {p.name}" for family, p in sorted(self.tracker.policies.items())) or "none"
        drift = ", ".join(f"{family} -> {p.name}" for family, p in sorted(self.drift_tracker.policies.items()))
        log.info("risk policies: %s; drift policies: %s", risk, drift)

    async def _dump_tasks_on_signal(self) -> None:
        """``kill -USR1 <worker>`` logs the stack of every asyncio task: where each agent waits, when one stalls."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._dump_tasks)

    @staticmethod
    def _dump_tasks() -> None:
        lines = []
        for task in asyncio.all_tasks():
            lines.append(f"task {task.get_name()}:")
            lines += _await_chain(task.get_coro())
        # an agent's own coroutine hides behind Faust's actor (a coroutine_wrapper, which has no frame)
        for obj in gc.get_objects():
            if not isinstance(obj, types.CoroutineType) or obj.cr_code.co_filename != __file__:
                continue
            if obj.cr_code.co_name.startswith("_on_"):
                lines.append(f"agent {obj.cr_code.co_name}:")
                lines += _await_chain(obj)
        log.warning("asyncio tasks on SIGUSR1:\n%s", "\n".join(lines))

    async def _maybe_fault(self, out: Fold, folded: int, done: int, batch: int) -> None:
        """The kill -9 test's moment (faults.py): what was sent is flushed to the broker first, so the replay meets
        it there."""
        reports = [(str(r["trace_id"]), str(r["stage"])) for r in out.reports]
        if not self.faults.should_kill(reports, folded, done, batch):
            return
        await self.app.producer.flush()
        log.warning(
            "fault injection: SIGKILL after folded step %d (event %d of a batch of %d); reports sent by "
            "this batch before its state write: %s",
            self.faults.folded,
            done,
            batch,
            json.dumps(self.faults.sent),
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.faults.trip()

    async def _close_idle_windows(self) -> None:
        async with self._profile_lock:
            touched: dict[bytes, dict[str, Any]] = {}
            acks: list[Awaitable[Any]] = []
            for key, state in list(self.profile_table.items()):
                if state is None:
                    continue
                model = key.decode()
                out = self.profile_tracker.on_tick(model, state, now_us())
                if out.reports:
                    acks += await self._publish_profiles(model, out.reports)
                    touched[key] = out.state
            await self._write(self.profile_table, touched, acks)

    async def _publish_profiles(self, model: str, snapshots: list[dict[str, Any]]) -> list[Awaitable[Any]]:
        acks = []
        for snap in snapshots:
            self.stats["profiles"] += 1
            acks.append(await self.profiles.send(key=model.encode(), value=self.codecs["ProfileSnapshot"].encode(snap)))
        return acks

    def _trace_of(self, value: bytes) -> bytes:
        return self._field_of(value, "trace_id")

    def _field_of(self, value: bytes, name: str) -> bytes:
        try:
            return str(self.codecs["Completion"].decode(value)[name]).encode()
        except DecodeError:
            return b"undecodable"  # decoded again after the repartition, and dead-lettered there

    async def _publish(self, key: bytes, out: Fold, counter: str, acks: list[Awaitable[Any]], inputs: int) -> bool:
        """Send the outcome of folding ``inputs`` records (its reports and alerts, whose acks join ``acks``); False
        when every input was a duplicate or rejected (nothing to store)."""
        self.stats["duplicates_risk"] += out.duplicates
        if out.duplicates + len(out.rejected) == inputs:
            return False
        self.stats[counter] += inputs - out.duplicates - len(out.rejected)
        for report in out.reports:
            acks.append(await self.risk.send(key=key, value=self.codecs["RiskReport"].encode(report)))
        for alert in out.alerts:
            self.stats["alerts"] += 1
            acks.append(await self.alerts.send(key=key, value=self.codecs["RiskAlert"].encode(alert)))
        return True

    async def _decode(
        self, name: str, event: faust.EventT[bytes], acks: list[Awaitable[Any]] | None = None
    ) -> dict[str, Any] | None:
        """The record, or None once it is dead-lettered (undecodable, or failing its ``CHECKS``: a malformed matrix
        would stop the agent that unpacks it); the dead letter's acknowledgement joins ``acks``."""
        try:
            rec = self.codecs[name].decode(bytes(event.value or b""))
            if name in CHECKS:
                CHECKS[name](rec)
            return rec
        except DecodeError as e:
            ack = await self._dead_letter(event, e)
            if acks is not None:
                acks.append(ack)
            return None

    async def _dead_letter(self, event: faust.EventT[bytes], error: BaseException) -> Awaitable[Any]:
        """Send ``event`` to the dead-letter topic with ``error`` as its reason; the send's acknowledgement."""
        msg = event.message
        self.stats["dead_letters"] += 1
        log.warning("dead letter %s[%d]@%d: %s: %s", msg.topic, msg.partition, msg.offset, type(error).__name__, error)
        rec = dead_letter(msg.topic, msg.partition, msg.offset, msg.key, event.value, error, self.app.conf.id, now_us())
        # keyed by the kept part of the key: the whole of a key near the size limit, on top of the value's kept part,
        # made the dead letter itself too large to send, and the agent crashed on that record at every restart
        value = self.codecs["DeadLetter"].encode(rec)
        ack: Awaitable[Any] = await self.dlq.send(key=rec["original_key"], value=value)
        return ack

    async def _evict_finished(self) -> None:
        """Drop the risk state of traces with no event for the replay horizon (``tracker.expired``), in event time
        against how far steps and completions were read (``StreamProgress``): each delete writes a tombstone to the
        changelog, so the table, and what a restart reads back, stay as large as the horizon's traffic."""
        async with self._risk_lock:
            at = self.progress.now()
            if at is None:
                return
            horizon = self.replay_horizon_us
            gone = [k for k, st in list(self.table.items()) if st is not None and expired(st, at, horizon)]
            if not gone:
                return
            await self._changelog_ready(self.table)
            for key in gone:
                del self.table[key]
            self.stats["evicted_risk"] += len(gone)


def _as_evo(error: BaseException) -> EvoError:
    """A fold's error as the project's: a check's own, or an unforeseen one wrapped with its type."""
    return error if isinstance(error, EvoError) else FoldError(f"{type(error).__name__}: {error}")


def _reason(error: BaseException, agent: str) -> EvoError:
    """The dead letter's error: which agent refused the record, and why."""
    evo = _as_evo(error)
    return DecodeError(f"{agent}: {evo}") if isinstance(evo, DecodeError) else FoldError(f"{agent}: {evo}")


def _await_chain(aw: Any) -> list[str]:
    """Where a coroutine waits: its await chain, outermost first (``Task.get_stack`` stops at the outermost frame)."""
    lines = []
    while aw is not None:
        frame = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None) or getattr(aw, "ag_frame", None)
        lines.append(
            f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
            if frame is not None
            else f"  awaits {aw!r:.200}"
        )
        aw = getattr(aw, "cr_await", None) or getattr(aw, "gi_yieldfrom", None) or getattr(aw, "ag_await", None)
    return lines


def _check_reach(policies: Mapping[str, RiskPolicy], profile: ProfilePolicy) -> None:
    """PolicyError where a risk policy keeps fewer of a trace's tokens (``repeat_window``) than profiling's n-grams
    reach back: a block's first n-grams start in the tokens before it, which the profiling partial takes from the
    trace's risk state, so those n-grams would be lost at every block boundary."""
    need = profile.ngram - 1
    short = sorted(f"{p.name} ({p.repeat_window})" for p in policies.values() if p.repeat_window < need)
    if short:
        raise PolicyError(
            f"risk policies {', '.join(short)} keep fewer tokens of a trace (repeat_window) than profiling's "
            f"{profile.ngram}-grams reach back ({need})"
        )


def processors_from_settings(settings: Settings, bootstrap: str, replication: int = 1) -> Processors:
    """The processors as ``evostream process`` runs them: the shipped risk and drift policy files, the settings'
    window sizes; ``replication`` replicas for the topics Faust creates."""
    return Processors(
        bootstrap,
        settings.processors_dir,
        load_policies(),
        app_id=settings.processors_app_id,
        drift=DriftTracker(
            load_drift_policies(), DriftWindows(settings.drift_reference_size, settings.drift_window_size)
        ),
        profile=ProfileTracker(ProfilePolicy(window_s=settings.profile_window_s)),
        handover=settings.processors_handover,
        faults=KillSwitch(settings.fault_kill_after, settings.fault_kill_model),
        replay_horizon_s=settings.risk_replay_horizon_s,
        replication=replication,
    )


def _tune_changelogs(procs: Processors, bootstrap: str) -> None:
    """Set ``changelog_config`` on the changelogs that exist already: Faust applies a table's ``extra_topic_configs``
    only to a changelog it creates, so one from a deployment before them kept 7-day segments (never compacted)."""
    tables = (procs.table, procs.drift_table, procs.profile_table)
    names = [t.changelog_topic.get_topic_name() for t in tables]
    try:
        set_topic_configs(bootstrap, dict.fromkeys(names, procs.changelogs))
    except StackError as e:  # compaction is late, not wrong: the worker still starts
        log.warning("%s; the changelogs keep their segment settings", e)


def run_worker(
    settings: Settings,
    bootstrap: str,
    loglevel: str = "WARNING",
    on_start: Callable[[Processors], Callable[[], None]] | None = None,
) -> None:
    """Run the processors until SIGTERM / SIGINT (Faust's worker handles both and commits on the way out).
    ``on_start`` gets the processors before they start (the CLI's wiring offers them governed probes from there)
    and returns what stops it afterwards."""
    from faust.worker import Worker

    procs = processors_from_settings(settings, bootstrap, default_replication(bootstrap))
    _tune_changelogs(procs, bootstrap)
    stop = on_start(procs) if on_start is not None else None
    try:
        Worker(procs.app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        if stop is not None:
            stop()
