"""``evostream serve``: consume evo.requests, generate in dynamic batches, emit steps and completions.

At-least-once: a request's offset is committed only after its Completion and every one of its steps are acknowledged.
A request that cannot be served (undecodable bytes, bad parameters, an empty or oversize prompt, a model error) gets an
error Completion or, when it cannot even be read, a dead letter: never silence, and the partition never blocks.

The model served may change between batches (``producers.swap``): every record names the version that produced it.

With a route (``producers.routing``), each request of a static batch is decided before generation (self or the
route's reference) and watched while the self model answers it; a request that moves mid-answer leaves the self
model's partial Completion (finish ESCALATED) and is answered by the reference. Every decision is a RouteDecision on
evo.routes, and a request's offset is done only once its final Completion is acknowledged.

During a rollout (``producers.deployment``), each static batch is split by ``rollout.split`` between production and
the candidate, each generating its own rows with its own instrumented generator: the candidate's answers are
Completions of role ANSWER carrying the rollout's id. Once production's answers are handed over, the requests
mirrored to the candidate are generated again by it, in the shadow: a SHADOW Completion each (its own trace, same
request and reply key: clients skip it) and a ShadowComparison on evo.shadow; such a request is done once all three
of its records are acknowledged. A candidate that fails answers its rows with error Completions (the rollout's gates
count them), never stopping the service. Continuous batching serves production only (said once in the log), and a
routed service takes no part in rollouts (refused here: its requests are the router's to place).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

from confluent_kafka import Message

from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.core.errors import ConsumeError, DecodeError, DeliveryError, EvoError
from evostream.models.loading import LoadedModel
from evostream.producers.batching import Row, RunningBatch, unsupported
from evostream.producers.client import BadRequestError, ids_problem, prompt_problem
from evostream.producers.completer import Completer
from evostream.producers.deployment import Deployment, DeploymentSource, ProductionOnly
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.emitter import BLOCK_MAX_STEPS, BLOCK_WINDOW_S, StepEmitter
from evostream.producers.generate import (
    MAX_NEW_TOKENS_LIMIT,
    MAX_PROMPT_TOKENS,
    Generated,
    GenerationError,
    GenParams,
    InstrumentedGenerator,
)
from evostream.producers.offsets import OffsetBook, RequestAcks
from evostream.producers.records import Answered, TokenTexts, completion_record, shadow_comparison
from evostream.producers.routing import Route, Watches, decision
from evostream.producers.steps import StepBatch, TraceMeta
from evostream.producers.swap import FixedModel, ModelSource, ServingModel
from evostream.producers.targets import BATCH_DEADLINE_S, POLL_INTERVAL_S, Answer, new_trace
from evostream.prompts.template import NoTemplates, Renderer, TemplateError
from evostream.rollout.split import Arm
from evostream.routing.policy import REFERENCE, SELF, Router, RoutingError, Verdict, prompt_features
from evostream.routing.prices import PriceTable
from evostream.schemas.catalog import (
    CATALOG,
    COMPLETIONS,
    DLQ,
    INFERENCE_GROUP,
    NEURONS,
    REQUESTS,
    ROUTES,
    SHADOW,
    STEP_BLOCKS,
    STEPS,
)
from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import dead_letter
from evostream.schemas.records import AnswerRole

log = logging.getLogger("evostream.serve")
GROUP = INFERENCE_GROUP
Position = tuple[tuple[str, int], int]
"""((topic, partition), offset) of a request, as the OffsetBook keys it."""
Batching = Literal["continuous", "static"]


@dataclass(frozen=True)
class ServeOptions:
    """How the service batches; the batch size and wait come from Settings (serve_max_batch, serve_max_wait_ms)."""

    max_batch: int
    max_wait_ms: int
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT
    batching: Batching = "static"
    """static: each batch runs to completion before the next is read; continuous: greedy requests join the running
    batch between steps and leave it when done (sampled requests run alone, each with its seed). Static is the
    default: on the default model's short, alike answers continuous batching generated fewer tokens/s than static at
    8 and 32 requests in flight (bench.serving; see docs/benchmarks.md#serving-through-kafka); it pays where lengths
    differ (bench.batching; see docs/benchmarks.md#the-decode-loops-alone)."""
    admit_min: int = 0
    """Continuous batching: newcomers join once this many slots are free (0: half the batch, at least 1), or once
    the oldest has waited ``admit_wait_ms``, or at once into an empty batch. Each admission is a prefill of its own:
    on the suite's short answers, admitting once half the batch is free lost much less against static batching than
    admitting each request as its slot freed, while on mixed lengths one at a time did better (bench.batching,
    decode loops alone, no timer; see docs/benchmarks.md#the-decode-loops-alone)."""
    admit_wait_ms: int = 20
    commit_every_s: float = 0.05
    """Continuous batching: how often the offsets of the requests answered are committed (their step events
    awaited first); at once whenever nothing else is in flight. Static batches commit after each batch."""
    shutdown_s: float = 10.0
    """From a stop (SIGTERM, SIGINT, ``stop_event``) on, every wait on the way out (the batch in flight's answers
    embedded and acknowledged, its step events acknowledged, the offsets committed, the clients closed) shares what
    is left of this budget, whatever the broker does; what could not be done is logged and the run ends with a
    DeliveryError saying so (those requests are served again by their partition's next owner). With
    ``install_signal_handlers``, a watchdog also ends the process ``WATCHDOG_GRACE_S`` after the budget if a call
    started before the signal (a batch's generation, a wait on a broker that is gone) still has not returned."""
    block_window_s: float = BLOCK_WINDOW_S
    """How long a trace's steps wait in the step emitter for more of them to join their step block (Settings'
    step_block_window_ms): a full block, a step with non-finite values and a drain end the wait."""
    block_max_steps: int = BLOCK_MAX_STEPS
    """Steps a step block holds at most (Settings' step_block_max_steps)."""
    commit_timeout_s: float = 5.0
    """How long one commit of offsets waits for the broker while serving (librdkafka's own wait has no end when the
    broker is gone); one not confirmed is tried again at a later tick."""


WATCHDOG_GRACE_S = 5.0
"""After a signal, seconds past ``shutdown_s`` before the watchdog ends the process."""


@dataclass
class _Pending:
    msg: Message
    meta: TraceMeta
    prompt: str
    params: GenParams
    read_at: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    arm: Arm = "INCUMBENT"
    """Who answers it during a rollout (``rollout.split``)."""
    embedding: list[float] | None = None
    """Its prompt's embedding once the completer made it: a mirrored request's shadow answer reuses it."""


@dataclass
class _Engine:
    """A version the service generates with: the model, its instrumented generator, its token texts."""

    serving: ServingModel
    generator: InstrumentedGenerator
    texts: TokenTexts

    @property
    def version(self) -> str:
        return self.serving.version


Report = Callable[[DeliveryError | None], None]


class InferenceService:
    """One consumer-group member serving requests with one model at a time."""

    def __init__(
        self,
        bootstrap: str,
        loaded: LoadedModel,
        embedder: PromptEmbedder | None,
        options: ServeOptions,
        generator: InstrumentedGenerator | None = None,
        models: ModelSource | None = None,
        route: Route | None = None,
        prices: PriceTable | None = None,
        templates: Renderer | None = None,
        deployments: DeploymentSource | None = None,
    ) -> None:
        """``loaded`` is served unless ``models`` is given: then its current model is served first, and whatever it
        names later from the next batch on. ``generator`` (for the first model) sets the attention signal and limits
        of the generators built for later models.

        ``route``: the served model is the route's self target and every request is routed (static batching only:
        continuous batching with a route is refused here). ``prices`` (the route's, when it has one) set each
        Completion's cost_usd. ``templates``: renders a request's prompt into the template it names (none: such a
        request is refused with an error Completion).

        ``deployments`` (instead of ``models``): production and a rollout's candidate, read once per batch
        (``producers.deployment``); refused with a route (a routed request is the router's to place)."""
        if route is not None and options.batching == "continuous":
            raise RoutingError(
                f"route {route.name!r}: a routed service batches statically (its requests are decided and watched "
                "batch by batch); serve it with --batching static"
            )
        if deployments is not None and route is not None:
            raise RoutingError(
                f"route {route.name!r}: a routed service takes no part in rollouts (its requests are the router's to "
                "place, not a canary's); serve the route without following rollouts"
            )
        if deployments is not None and models is not None:
            raise GenerationError("give the service a model source or a deployment source, not both")
        self.route = route
        self.templates = templates or NoTemplates()
        self.prices = route.prices if route is not None else prices or PriceTable()
        self.bootstrap = bootstrap
        self.source: DeploymentSource = deployments or ProductionOnly(
            models or FixedModel(ServingModel(loaded.version, loaded))
        )
        self.deployment: Deployment = self.source.deployment()
        """What the batch being served is split by (read by ``follow``)."""
        first = self.deployment.production
        self.embedder = embedder
        self.options = options
        if generator is not None and generator.loaded is not first.loaded:
            raise GenerationError(
                f"the generator was built for {generator.loaded.version}, not for the model served "
                f"first ({first.version})"
            )
        generator = generator or InstrumentedGenerator(
            first.loaded,
            max_prompt_tokens=options.max_prompt_tokens,
            max_new_tokens_limit=options.max_new_tokens_limit,
        )
        self._prod = _Engine(first, generator, TokenTexts(first.loaded.tokenizer))
        """Production: what answers every request not sent to a candidate."""
        self._candidate: _Engine | None = None
        """The candidate served beside production (static batching), once its generator is built."""
        self._unservable: dict[str, str] = {}
        """Candidate versions whose generator could not be built, with why: their rows get error answers."""
        self._said_production_only = ""
        self._refused: ServingModel | None = None
        self.swaps = 0
        # the topics it writes, created if missing (a broker set up by an older version lacks newer ones)
        written = (
            (STEPS, STEP_BLOCKS, COMPLETIONS, NEURONS, DLQ)
            + ((ROUTES,) if route is not None else ())
            + ((SHADOW,) if deployments is not None else ())
        )
        ensure_topics(bootstrap, [t for t in CATALOG if t.name in written])
        # completions leave at once (linger 1 ms, not 5): a batch's completions are sent together anyway
        self.producer = EventProducer(bootstrap, {"linger.ms": 1})
        self.emitter = StepEmitter(
            bootstrap, block_window_s=options.block_window_s, block_max_steps=options.block_max_steps
        )
        self.requests = RecordCodec("InferenceRequest")
        self.completions = RecordCodec("Completion")
        self.dead_letters = RecordCodec("DeadLetter")
        self.neurons = RecordCodec("NeuronCounts")
        self.routes = RecordCodec("RouteDecision")
        self.comparisons = RecordCodec("ShadowComparison")
        self.stop_event = threading.Event()
        self._served = 0
        self._served_lock = threading.Lock()
        self._read_n = 0  # requests read (max_requests counts these)
        self._rows: dict[str, tuple[_Pending, int]] = {}
        """Continuous batching: the requests in the running batch by trace id, with when each started (us)."""
        self._done: deque[Position] = deque()
        """Positions of the requests whose Completion (or dead letter) the broker acknowledged, for the OffsetBook."""
        self._lost: deque[DeliveryError] = deque()
        """Answers the broker refused: the service stops before committing anything after them."""
        self._acks = RequestAcks(self._done.append)
        """Routed and mirrored requests: done once all their records are acknowledged (a routed request's decisions,
        partial and final answers; a mirrored one's answer, shadow answer and comparison)."""
        self._stop_at: float | None = None
        """When the stop was first seen (monotonic): the shutdown budget counts from there."""
        self._book: OffsetBook | None = None
        self._commit_warned = ""
        self.completer: Completer
        # joined in run(), not here: a service built but never run must not sit in the group holding partitions
        # (librdkafka keeps an idle member for max.poll.interval.ms, and its requests wait that long)
        self.consumer: EventConsumer

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT finish the in-flight batch, flush, commit, then stop, within ``ServeOptions.shutdown_s``
        (waits on the way out are cut to it); a watchdog ends the process ``WATCHDOG_GRACE_S`` later if a call
        started before the signal has still not returned, saying what was left undone."""

        def stop(*_: object) -> None:
            if self.stop_event.is_set():
                return
            self.stop_event.set()
            self._left(0.0)  # the budget starts now
            watchdog = threading.Timer(self.options.shutdown_s + WATCHDOG_GRACE_S, self._give_up)
            watchdog.daemon = True
            watchdog.start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)

    def _left(self, wanted: float) -> float:
        """``wanted`` seconds while serving; after a stop, no more than what is left of the shutdown budget (at
        least 0.1 s, so that what is already done is still seen)."""
        if not self.stop_event.is_set():
            return wanted
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        return max(0.1, min(wanted, self._stop_at + self.options.shutdown_s - time.monotonic()))

    def _undone(self) -> str:
        """What a stop now would leave undone, for the log."""
        book = self._book
        read = book.in_flight() if book is not None else 0
        waiting = book.committable(set(self.consumer.assigned)) if book is not None else {}
        offsets = ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(waiting.items())) or "none"
        return (
            f"{read} requests read and not answered, {self.producer.in_flight()} records not acknowledged, "
            f"offsets not committed: {offsets}; their requests are served again by their partition's next owner"
        )

    def _give_up(self) -> None:
        """The watchdog: the way out took longer than its budget; say what is left and end the process."""
        log.error(
            "not stopped %.0f s after the signal (a call on the way out has not returned): exiting now; %s",
            self.options.shutdown_s + WATCHDOG_GRACE_S,
            self._undone(),
        )
        logging.shutdown()
        os._exit(1)

    # production as the service serves it now (swapped by ``follow`` between batches)
    @property
    def serving(self) -> ServingModel:
        return self._prod.serving

    @property
    def loaded(self) -> LoadedModel:
        return self._prod.serving.loaded

    @property
    def generator(self) -> InstrumentedGenerator:
        return self._prod.generator

    @property
    def texts(self) -> TokenTexts:
        return self._prod.texts

    @property
    def candidate(self) -> ServingModel | None:
        """The candidate served beside production now, if any."""
        return self._candidate.serving if self._candidate is not None else None

    @property
    def served(self) -> int:
        """Requests answered so far (a Completion or a dead letter sent)."""
        return self._served

    def run(self, on_ready: Callable[[], None] = lambda: None, max_requests: int | None = None) -> None:
        """Serve until stopped (SIGTERM / SIGINT, ``stop_event``) or, given ``max_requests``, until that many requests
        have been read and answered."""
        # max.poll.interval.ms stated, not left to librdkafka: a batch's HTTP reference calls are bounded by a share
        # of it (targets.BATCH_DEADLINE_S)
        config = {"enable.auto.commit": False, "max.poll.interval.ms": int(POLL_INTERVAL_S * 1000)}
        self.consumer = EventConsumer(self.bootstrap, GROUP, [REQUESTS], config)
        self.completer = Completer(self._embed)
        book = self._book = OffsetBook()
        try:
            on_ready()
            problem = unsupported(self.generator) if self.options.batching == "continuous" else None
            if problem is not None:
                log.warning("%s: serving static batches", problem)
            if self.options.batching == "continuous" and problem is None:
                self._run_continuous(book, max_requests)
            else:
                self._run_static(book, max_requests)
            self._finish(book)
        finally:
            self._close()

    def _finish(self, book: OffsetBook) -> None:
        """The way out, each wait within the shutdown budget once a stop was asked: the answers of the requests in
        flight embedded and acknowledged (neuron counts, and completions of partitions taken away, go out too), their
        step events acknowledged, their offsets committed. What could not be done is logged and raised."""
        problems = []
        try:
            self.completer.wait(timeout_s=self._left(max(60.0, 5.0 * self.completer.busy)))
        except EvoError as e:
            problems.append(str(e))
        try:
            self.producer.flush(self._left(30.0))
        except DeliveryError as e:
            problems.append(f"answers: {e}")
        try:
            self._commit(book, final=True)
        except EvoError as e:
            problems.append(str(e))
        if problems:
            why = f"stopped with work undone: {'; '.join(problems)}; {self._undone()}"
            log.error("%s", why)
            raise DeliveryError(why)

    def _close(self) -> None:
        """Close what run() opened, each within what is left of the budget; a failure is logged, not raised over
        the run's own outcome."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("the completion thread", lambda: self.completer.close(self._left(60.0))),
            ("the step emitter", lambda: self.emitter.close(self._left(60.0))),
            ("the consumer", lambda: self.consumer.close(self._left(30.0))),
        ]
        for what, close in steps:
            try:
                close()
            except EvoError as e:
                log.error("closing %s: %s", what, e)
        self._drop_candidate()

    def _run_static(self, book: OffsetBook, max_requests: int | None) -> None:
        """Batches run to completion one after another; each one's prompts are embedded while the next decodes."""
        while not self.stop_event.is_set():
            if max_requests is not None and self._read_n >= max_requests:
                break
            msgs = self._poll_batch()
            self.follow()  # after the poll: a request published after a swap returned meets the new model
            if msgs:
                self._serve(msgs, book)
            else:
                self.producer.poll()  # an idle producer reports a lost broker now, not at the next request
            self._commit(book)

    def _swap_pending(self) -> bool:
        """Whether the source names a production model other than the one served (and not one already refused)."""
        nxt = self.source.deployment().production
        return nxt is not self.serving and nxt is not self._refused

    def follow(self, candidates: bool = True) -> None:
        """Serve the source's deployment from this batch on: its production model (nothing in flight uses the old
        one any more) and, with ``candidates`` (static batches), its candidate beside it."""
        dep = self.source.deployment()
        self._follow_production(dep.production)
        if candidates:
            self._follow_candidate(dep)
        elif dep.active and self._said_production_only != dep.describe():
            self._said_production_only = dep.describe()
            log.warning(
                "continuous batching serves production only: the candidate of %s gets no requests here (serve with "
                "--batching static to take part in rollouts and shadows)",
                dep.describe(),
            )
        self.deployment = dep

    def _new_generator(self, loaded: LoadedModel) -> InstrumentedGenerator:
        """A generator for ``loaded`` with production's signal and limits, so the versions' statistics compare."""
        like = self.generator
        return InstrumentedGenerator(
            loaded,
            like.signal,
            like.max_prompt_tokens,
            like.max_new_tokens_limit,
            instrument=like.instrument,
            kv_cache=like.kv_cache,
        )

    def _follow_production(self, nxt: ServingModel) -> None:
        if nxt is self.serving or nxt is self._refused:
            return
        if nxt.loaded is not self.loaded:
            old = self.generator
            cand = self._candidate
            if cand is not None and cand.serving.loaded is nxt.loaded:  # a completed rollout: no new generator
                engine, self._candidate = _Engine(nxt, cand.generator, cand.texts), None
            else:
                try:
                    engine = _Engine(nxt, self._new_generator(nxt.loaded), TokenTexts(nxt.loaded.tokenizer))
                except EvoError as e:
                    log.error(
                        "cannot serve model version %s: %s; %s keeps serving", nxt.version, e, self.serving.version
                    )
                    self._refused = nxt
                    return
            old.close()
        else:
            engine = _Engine(nxt, self.generator, self.texts)
        log.info("now serving model version %s (was %s)", nxt.version, self.serving.version)
        self._prod = engine
        self._refused = None
        self.swaps += 1

    def _follow_candidate(self, dep: Deployment) -> None:
        """Build the generator of the deployment's candidate when it first comes (once per version: one that
        cannot be built is not tried again, and its rows get error answers), and close the one that went."""
        want = dep.candidate
        cur = self._candidate
        if cur is not None and (want is None or want.loaded is not cur.serving.loaded or want.version != cur.version):
            self._drop_candidate()
        if want is None or self._candidate is not None or want.version in self._unservable:
            return
        try:
            if want.loaded is self.loaded:  # two generators would hook one model twice, mixing their statistics
                raise GenerationError(f"it is the same loaded model as production's ({self.serving.version})")
            generator = self._new_generator(want.loaded)
        except Exception as e:  # any failure refuses the candidate; production goes on
            why = f"{type(e).__name__}: {e}"
            log.error("cannot serve candidate %s: %s; its requests get error answers", want.version, why)
            self._unservable[want.version] = why
            return
        self._candidate = _Engine(want, generator, TokenTexts(want.loaded.tokenizer))
        log.info("serving %s", dep.describe())

    def _drop_candidate(self) -> None:
        cur, self._candidate = self._candidate, None
        if cur is not None:
            cur.generator.close()
            log.info("candidate %s no longer served", cur.version)

    # --- continuous batching -------------------------------------------------------------------------------------
    def _run_continuous(self, book: OffsetBook, max_requests: int | None) -> None:
        """Read requests while there is room, admit greedy ones to the running batch between steps, hand each over
        to the completer as soon as it is done; every ``commit_every_s``, and whenever nothing is in flight, await the
        outputs and commit the offsets of what is answered (never past a request still in flight on its partition). A
        stop admits nothing more and finishes the requests in flight; requests read but not admitted are read again by
        whoever serves their partition next."""
        batch = self._new_batch()
        queue: deque[_Pending] = deque()
        last_commit = time.monotonic()
        while not self.stop_event.is_set() or self._rows:  # a stop finishes the requests in flight, admits no more
            limit = None if max_requests is None else max_requests - self._read_n
            if limit is not None and limit <= 0 and not self._rows and not queue:
                break
            stopping = self.stop_event.is_set()
            room = 0 if stopping else min(batch.free - len(queue), limit if limit is not None else batch.free)
            if room > 0:
                idle = not self._rows and not queue
                for msg in self.consumer.poll_ready(room, timeout_s=0.5 if idle else 0.0):
                    pending = self._read(msg, now_us(), book)
                    if pending is None:  # answered with an error Completion or dead-lettered already
                        continue
                    if pending.params.do_sample:  # its own seed: run to completion now, alone
                        self._generate(pending.params, [pending], now_us())
                    else:
                        queue.append(pending)
            if not self._rows:  # a swap happens only between batches: nothing in flight uses the old model
                before = self.generator
                self.follow(candidates=False)
                if self.generator is not before:
                    batch = self._new_batch()
            if queue and batch.free and not self._swap_pending() and not stopping and self._admit_now(batch, queue):
                take = [queue.popleft() for _ in range(min(batch.free, len(queue)))]
                started = now_us()
                self._rows.update({p.meta.trace_id: (p, started) for p in take})
                new = [Row(p.meta.trace_id, p.params.max_new_tokens) for p in take]
                self._advance(
                    partial(batch.admit, [p.prompt for p in take], new, self._row_step), [p.meta.trace_id for p in take]
                )
            if len(batch) and not self._advance(partial(batch.step, self._row_step)):
                batch = self._new_batch()
            if not self._rows or time.monotonic() - last_commit >= self.options.commit_every_s:
                self._publish_neuron_counts(now_us())
                self._commit(book)
                last_commit = time.monotonic()
            if not self._rows and not queue:
                self.producer.poll()  # an idle producer reports a lost broker now, not at the next request

    def _admit_now(self, batch: RunningBatch, queue: deque[_Pending]) -> bool:
        """Whether the queued requests join now (``ServeOptions.admit_min``)."""
        opts = self.options
        admit_min = min(opts.admit_min or max(1, opts.max_batch // 2), opts.max_batch)
        return (
            not len(batch)
            or batch.free >= admit_min
            or time.monotonic() - queue[0].read_at >= opts.admit_wait_ms / 1000
        )

    def _new_batch(self) -> RunningBatch:
        return RunningBatch(self.generator, self.options.max_batch)

    def _row_step(self, sb: StepBatch, rows: list[Row]) -> None:
        metas = [self._rows[row.key][0].meta for row in rows]
        self.emitter.submit(sb, metas, self.serving.version, self.generator.signal, self.texts.rows(sb))

    def _advance(self, move: Callable[[], list[Row]], at_risk: list[str] | None = None) -> bool:
        """Admit or step, then hand the rows that finished to the completer. A model error fails the rows at risk (the
        newcomers of an admission: the running batch is untouched until they are merged; every row for a step),
        each with an error Completion; False when the batch must be built anew."""
        try:
            finished = move()
        except Exception as e:  # any model error fails requests loudly, never the service
            keys = list(self._rows) if at_risk is None else at_risk
            log.exception("generation failed for %d requests", len(keys))
            failed = [self._rows.pop(key) for key in keys]
            self._hand_over([(p, None, started) for p, started in failed], error=f"model error: {e}")
            return at_risk is not None
        done = []
        for row in finished:
            row.result.decode_us = max(0, int((time.perf_counter() - row.admitted) * 1e6) - row.result.prefill_us)
            p, started = self._rows.pop(row.key)
            done.append((p, row.result, started))
        self._hand_over(done)
        return True

    # --- completions ---------------------------------------------------------------------------------------------
    def _hand_over(
        self,
        done: Sequence[tuple[_Pending, Generated | None, int]],
        error: str | None = None,
        texts: list[str] | None = None,
        version: str | None = None,
        rollout_id: str | None = None,
    ) -> None:
        """The Completions of requests done by ``version`` (production by default; ``texts``: their answers, else
        decoded by production's tokenizer), sent by the completer once their prompts are embedded (the model decodes
        meanwhile); each request's position is then done for the OffsetBook, a mirrored request's once its shadow
        records are acknowledged too."""
        if not done:
            return
        version = version or self.serving.version  # what produced them, whatever is served when they are sent
        if texts is None:
            texts = _decoded(self._prod, [gen for _, gen, _ in done])
        # made here, on the serving thread: a mirrored request's records are all counted before any is acknowledged
        reports = [
            self._tracked(_position(p.msg), final=False) if p.arm == "MIRRORED" else self._delivered(_position(p.msg))
            for p, _, _ in done
        ]

        def then(embeddings: list[list[float]]) -> None:
            for (p, gen, started), text, emb, report in zip(done, texts, embeddings, reports, strict=True):
                p.embedding = emb
                self._complete(
                    p.meta,
                    version,
                    gen,
                    text,
                    emb,
                    started,
                    error,
                    rollout_id=rollout_id,
                    report=report,
                )

        self.completer.submit([p.prompt for p, _, _ in done], then)

    def _commit(self, book: OffsetBook, final: bool = False) -> None:
        """Commit the offsets of the requests whose Completion (or dead letter) the broker acknowledged, once every
        step event submitted so far is acknowledged too. A failed delivery stops the service before any commit. A
        commit the broker does not confirm is tried again at the next tick; ``final``: raised (nothing comes next)."""
        self.completer.check()
        self.producer.poll()  # delivery reports waiting to be served
        self._raise_lost()
        while self._done:  # filled by delivery reports: acknowledged answers only
            book.done(*self._done.popleft())
        assigned = set(self.consumer.assigned)
        book.forget(assigned)  # a partition taken away: its requests in flight are the new owner's to serve
        offsets = book.committable(assigned)
        if not offsets:
            return
        # every step event acknowledged, those of the requests answered too; a stop asked for meanwhile ends this
        # wait: the last commit, on the stop's own budget, drains again and says what it could not do
        if not self.emitter.drain(self._left(60.0), stop=None if final else self.stop_event):
            return
        try:
            self.consumer.commit_offsets(offsets, timeout_s=self._left(self.options.commit_timeout_s))
        except ConsumeError as e:  # a rebalance under way refuses it, or a broker gone does not answer: the next
            if final:  # tick commits again, or the new owner re-serves (at-least-once)
                raise
            if str(e) != self._commit_warned:  # once, not at every tick while the broker is gone
                log.warning("%s; retried at the next tick", e)
                self._commit_warned = str(e)
            return
        self._commit_warned = ""
        book.committed(offsets)

    # --- static batches ------------------------------------------------------------------------------------------
    def _poll_batch(self) -> list[Message]:
        """The first request as soon as it comes (up to 0.5 s), then what else arrives within ``max_wait_ms``."""
        msgs = self.consumer.poll_ready(self.options.max_batch, timeout_s=0.5)
        deadline = time.monotonic() + self.options.max_wait_ms / 1000
        while msgs and len(msgs) < self.options.max_batch and (left := deadline - time.monotonic()) > 0:
            msgs += self.consumer.poll_ready(self.options.max_batch - len(msgs), timeout_s=left)
        return msgs

    def _serve(self, msgs: list[Message], book: OffsetBook) -> None:
        started = now_us()
        dep = self.deployment  # read by follow() before this batch: the whole batch is split by it
        candidate = (dep.candidate.version if dep.candidate is not None else "", dep.rollout_id)
        groups: dict[GenParams, list[_Pending]] = {}
        canary: dict[GenParams, list[_Pending]] = {}
        for msg in msgs:
            pending = self._read(msg, started, book)
            if pending is None:
                continue
            pending.arm = dep.assign(pending.meta.request_id)
            (canary if pending.arm == "CANDIDATE" else groups).setdefault(pending.params, []).append(pending)
        router = self.route.router() if self.route is not None else None  # once per batch: a new level applies next
        deadline = time.monotonic() + BATCH_DEADLINE_S  # the reference calls of all the batch's groups end by then
        mirrored: dict[GenParams, list[tuple[_Pending, Answered]]] = {}
        for params, batch in groups.items():
            if self.route is not None and router is not None:
                self._generate_routed(self.route, router, params, batch, started, deadline)
                continue
            answered = self._generate(params, batch, started)
            mirror = [(p, a) for p, a in zip(batch, answered, strict=True) if p.arm == "MIRRORED"]
            if mirror:
                mirrored[params] = mirror
        for params, batch in canary.items():  # the candidate's answers: answers like production's
            self._generate(params, batch, started, candidate)
        for params, mirror in mirrored.items():  # after every answer is handed over: the shadow's wait is no one's
            self._shadow(params, mirror, started, candidate)
        self._publish_neuron_counts(started)

    def _publish_neuron_counts(self, started: int) -> None:
        """FFN neuron firing counts of the batch, per version generating: one small event per batch instead of d_ff
        numbers per step."""
        for engine in (self._prod, self._candidate):
            taken = engine.generator.take_neuron_counts() if engine is not None else None
            if engine is None or taken is None:
                continue
            counts, rows = taken
            rec = {
                "snapshot_id": uuid.uuid4().hex,
                "model_version": engine.version,
                "steps": rows,
                "num_layers": counts.shape[0],
                "ffn_width": counts.shape[1],
                "counts": counts.astype("<i4").tobytes(),
                "window_start_us": started,
                "window_end_us": now_us(),
            }
            self.producer.send(NEURONS, engine.version, self.neurons.encode(rec))

    def _read(self, msg: Message, started: int, book: OffsetBook) -> _Pending | None:
        """A request read (its offset now open in ``book``); None when it was answered at once: dead-lettered, or an
        error Completion handed over."""
        book.read(*_position(msg))
        self._read_n += 1
        try:
            req = self.requests.decode(msg.value() or b"")
        except DecodeError as e:
            self._dead_letter(msg, e)
            return None
        unanswerable = ids_problem(req["request_id"], req["reply_to"], req["tenant"])
        if unanswerable is not None:
            self._dead_letter(msg, BadRequestError(unanswerable))
            return None
        meta = TraceMeta(
            uuid.uuid4().hex,
            req["request_id"],
            req["reply_to"] or req["request_id"],
            req["tenant"],
            req["submitted_at_us"],
        )
        p = req["params"]
        params = GenParams(p["max_new_tokens"], p["do_sample"], p["temperature"], p["top_k"], p["top_p"], p["seed"])
        pending = _Pending(msg, meta, req["prompt"], params)
        try:
            params.check(self.options.max_new_tokens_limit)
            problem = prompt_problem(req["prompt"])
            if problem is not None:
                raise GenerationError(problem)
            pending.prompt, template_version = self.templates.render(req["template"], req["prompt"])
            pending.meta = replace(meta, template_version=template_version)
            n = len(self.loaded.tokenizer(pending.prompt).input_ids)
            if n > self.options.max_prompt_tokens:
                raise GenerationError(f"prompt of {n} tokens exceeds the limit of {self.options.max_prompt_tokens}")
            pending.prompt_tokens = n
        except (GenerationError, TemplateError) as e:
            self._hand_over([(pending, None, started)], error=str(e))
            return None
        return pending

    def _generate(
        self, params: GenParams, batch: list[_Pending], started: int, candidate: tuple[str, str | None] | None = None
    ) -> list[Answered]:
        """Answer ``batch`` with production, or with the candidate (``candidate``: its version and rollout id,
        carried by its Completions); what each row got, for a shadow comparison."""
        metas = [p.meta for p in batch]
        engine, (version, rollout_id) = (
            (self._prod, (self.serving.version, None)) if candidate is None else (self._candidate, candidate)
        )
        results, error = self._run(engine, version, params, [p.prompt for p in batch], metas)
        texts = _decoded(engine, results)
        # embedded by the completer, after generating: the embedding is only needed in the Completion, and neither
        # the first token nor the next batch need wait for it
        done = [(p, res, started) for p, res in zip(batch, results, strict=True)]
        self._hand_over(done, error, texts, version, rollout_id)
        return [
            Answered(version, m.trace_id, res, text, error) for m, res, text in zip(metas, results, texts, strict=True)
        ]

    def _run(
        self, engine: _Engine | None, version: str, params: GenParams, prompts: list[str], metas: list[TraceMeta]
    ) -> tuple[list[Generated | None], str | None]:
        """Generate ``prompts`` with ``engine``, its steps emitted under ``version`` and ``metas``' traces: the results,
        or Nones and why they failed. A model error fails the rows, loudly, never the service (for a candidate, any
        error: a canary's bug must not stop production)."""
        if engine is None:
            why = self._unservable.get(version, "its model is not loaded")
            return [None] * len(prompts), f"candidate {version} cannot serve: {why}"
        gen = engine.generator

        def on_step(sb: StepBatch) -> None:
            self.emitter.submit(sb, metas, version, gen.signal, engine.texts.rows(sb))

        caught: tuple[type[BaseException], ...] = (
            (EvoError, RuntimeError, ValueError) if engine is self._prod else (Exception,)
        )
        try:
            return list(gen.generate(prompts, params, on_step)), None
        except caught as e:
            log.exception("generation failed for %d requests on %s", len(prompts), version)
            return [None] * len(prompts), f"model error: {e}"

    def _shadow(
        self,
        params: GenParams,
        mirror: list[tuple[_Pending, Answered]],
        started: int,
        candidate: tuple[str, str | None],
    ) -> None:
        """The candidate's answers to the mirrored requests, in the shadow: a SHADOW Completion each (a trace of its
        own; its steps under the candidate's version) and a ShadowComparison with production's answer, the request's
        last record (its offset is done once it and the two answers are acknowledged)."""
        version, rollout_id = candidate
        rows = [p for p, _ in mirror]
        metas = [new_trace(p.meta) for p in rows]
        results, error = self._run(self._candidate, version, params, [p.prompt for p in rows], metas)
        texts = _decoded(self._candidate, results)
        reports = [self._tracked(_position(p.msg), final=False) for p in rows]

        def then(_: list[list[float]]) -> None:  # after production's answers: their embeddings are made
            for p, meta, gen, text, report in zip(rows, metas, results, texts, reports, strict=True):
                emb = p.embedding or []
                self._complete(
                    meta,
                    version,
                    gen,
                    text,
                    emb,
                    started,
                    error,
                    role="SHADOW",
                    rollout_id=rollout_id,
                    report=report,
                    counted=False,
                )

        self.completer.submit([], then)
        for (p, production), meta, gen, text in zip(mirror, metas, results, texts, strict=True):
            rec = shadow_comparison(p.meta, rollout_id, production, Answered(version, meta.trace_id, gen, text, error))
            on_delivery = self._tracked(_position(p.msg), final=True)
            self.producer.send(SHADOW, p.meta.request_id, self.comparisons.encode(rec), on_delivery=on_delivery)

    # --- routed static batches -----------------------------------------------------------------------------------
    def _generate_routed(
        self, route: Route, router: Router, params: GenParams, batch: list[_Pending], started: int, deadline: float
    ) -> None:
        """Decide each request before generation, generate the self model's share with a watch per row, move the rows
        whose watch moved (their partial answers published), and have the reference answer the rest by ``deadline``
        (the batch's, ``time.monotonic()``)."""
        embeddings = self._embed([p.prompt for p in batch])  # the prompt features need them: embedded first
        self_v, ref_v = self.serving.version, route.reference.version
        costs = [
            (
                self.prices.cost(self_v, p.prompt_tokens, params.max_new_tokens),
                self.prices.cost(ref_v, p.prompt_tokens, params.max_new_tokens),
            )
            for p in batch
        ]
        ref_metas: dict[int, TraceMeta] = {}
        to_self: list[int] = []
        for i, (p, emb) in enumerate(zip(batch, embeddings, strict=True)):
            verdict = _before(router, p.prompt, emb)
            trace = p.meta.trace_id
            if verdict.target == SELF:
                to_self.append(i)
            else:
                ref_metas[i] = new_trace(p.meta)
                trace = ref_metas[i].trace_id
            self._decided(route, router, p, "PROMPT", verdict, (self_v, ref_v), costs[i], trace)
        if to_self:
            rows = [batch[i] for i in to_self]
            metas = [p.meta for p in rows]
            signal_name = self.generator.signal
            watches = Watches([router.watch() for _ in rows], metas, self_v, signal_name)

            def on_step(sb: StepBatch) -> list[int]:
                texts = self.texts.rows(sb)
                self.emitter.submit(sb, metas, self_v, signal_name, texts)
                return watches.on_step(sb, texts)

            try:
                results = self.generator.generate([p.prompt for p in rows], params, on_step)
            except (EvoError, RuntimeError, ValueError) as e:  # a model error fails these requests, loudly
                log.exception("generation failed for %d requests", len(rows))
                for i in to_self:
                    p = batch[i]
                    error = f"model error: {e}"
                    self._complete(
                        p.meta, self_v, None, "", embeddings[i], started, error, _position(p.msg), routed=True
                    )
                results = []
            tok = self.loaded.tokenizer
            for j, res in enumerate(results):
                i, p = to_self[j], batch[to_self[j]]
                text = tok.decode(res.token_ids, skip_special_tokens=True)
                moved = watches.moved.get(j)
                at = _position(p.msg)
                if moved is None:
                    self._complete(p.meta, self_v, res, text, embeddings[i], started, at=at, routed=True)
                    continue
                # the partial answer: not the request's last word
                self._complete(p.meta, self_v, res, text, embeddings[i], started, at=at, final=False, routed=True)
                ref_metas[i] = new_trace(p.meta)
                self._decided(route, router, p, "GENERATION", moved, (self_v, ref_v), costs[i], p.meta.trace_id)
        if ref_metas:
            order = sorted(ref_metas)
            asked = [batch[i].prompt for i in order]
            answers = _ask(route, asked, params, [ref_metas[i] for i in order], self.emitter, deadline)
            for i, answer in zip(order, answers, strict=True):
                self._answered(ref_v, ref_metas[i], answer, embeddings[i], started, _position(batch[i].msg))

    def _answered(
        self, version: str, meta: TraceMeta, answer: Answer, embedding: list[float], started: int, at: Position
    ) -> None:
        """The reference's answer to a request: its final Completion."""
        gen, text, error = answer.generated, answer.text, answer.error
        self._complete(meta, version, gen, text, embedding, started, error, at, answer.output_tokens, routed=True)

    def _decided(
        self,
        route: Route,
        router: Router,
        pending: _Pending,
        stage: Literal["PROMPT", "GENERATION"],
        verdict: Verdict,
        versions: tuple[str, str],
        costs: tuple[float, float],
        trace_id: str,
    ) -> None:
        """Publish one RouteDecision: its request is not done before it is acknowledged (a lost one stops the
        service, as a lost answer does)."""
        rec = decision(route.name, router, pending.meta, stage, verdict, versions, costs, trace_id)
        tracked = self._tracked(_position(pending.msg), final=False)
        self.producer.send(ROUTES, pending.meta.request_id, self.routes.encode(rec), on_delivery=tracked)

    def _embed(self, prompts: list[str]) -> list[list[float]]:
        if self.embedder is None:
            return [[] for _ in prompts]
        return self.embedder.embed(prompts)

    def _complete(
        self,
        meta: TraceMeta,
        version: str,
        gen: Generated | None,
        text: str,
        embedding: list[float],
        started: int,
        error: str | None = None,
        at: Position | None = None,
        token_count: int | None = None,
        final: bool = True,
        routed: bool = False,
        role: AnswerRole = "ANSWER",
        rollout_id: str | None = None,
        report: Report | None = None,
        counted: bool = True,
    ) -> None:
        """Send one Completion (on the completer's thread, or the serving thread for a routed request), priced by the
        price table; once the broker acknowledges it, the request at ``at`` is done for the OffsetBook. ``final``
        False: not the request's last word (an ESCALATED partial answer). ``routed``: the request is done only once
        every record sent for it (``_tracked``) is acknowledged too. ``report``: its delivery report, made by the
        caller (instead of ``at``'s); ``counted`` False: it answers no request (a SHADOW answer)."""
        cost = 0.0
        if gen is not None and error is None:
            output = token_count if token_count is not None else len(gen.token_ids)
            cost = self.prices.cost(version, gen.prompt_tokens, output)
        rec = completion_record(
            meta, version, gen, text, embedding, started, error, cost, token_count, role, rollout_id
        )
        if report is None:
            routed_at = at if routed else None
            report = self._tracked(routed_at, final) if routed_at else self._delivered(at if final else None)
        self.producer.send(COMPLETIONS, meta.trace_id, self.completions.encode(rec), on_delivery=report)
        if final and counted:  # a partial answer does not answer its request, nor does a shadow one
            self._count()

    def _dead_letter(self, msg: Message, error: Exception) -> None:
        rec = dead_letter(
            msg.topic() or REQUESTS,
            msg.partition() or 0,
            msg.offset() or 0,
            msg.key(),
            msg.value(),
            error,
            GROUP,
            now_us(),
        )
        key = rec["original_key"]  # at most dead_letter's KEEP_BYTES: a record near the size limit was cut
        self.producer.send(DLQ, key, self.dead_letters.encode(rec), on_delivery=self._delivered(_position(msg)))
        self._count()

    def _delivered(self, at: Position | None) -> Callable[[DeliveryError | None], None]:
        """The delivery report of an answer: acknowledged, its request is done; lost, the service stops (its request
        stays uncommitted and is served again). Runs on whichever thread serves the producer's callbacks."""

        def report(error: DeliveryError | None) -> None:
            if error is not None:
                self._lost.append(error)
            elif at is not None:
                self._done.append(at)

        return report

    def _tracked(self, at: Position, final: bool) -> Report:
        """The delivery report of one of a routed or mirrored request's records (``final``: its last one: a routed
        request's final Completion, a mirrored one's ShadowComparison): the request is done once all of them are
        acknowledged (``RequestAcks``); a lost one stops the service. Made on the serving thread, before the request's
        last record is sent."""
        self._acks.sent(at)

        def report(error: DeliveryError | None) -> None:
            if error is not None:
                self._lost.append(error)
            else:
                self._acks.acked(at, final)

        return report

    def _raise_lost(self) -> None:
        if self._lost:
            raise self._lost[0]

    def _count(self) -> None:
        with self._served_lock:
            self._served += 1


def _ask(
    route: Route, prompts: list[str], params: GenParams, metas: list[TraceMeta], emitter: StepEmitter, deadline: float
) -> list[Answer]:
    """The reference's answers to ``prompts``, one each; whatever the target raises, or an answer count that does
    not match, is an error answer for each of them: a reference fails its requests, never the service."""
    version = route.reference.version
    try:
        answers = route.reference.answer(prompts, params, metas, emitter.submit, deadline)
    except Exception as e:  # any bug or failure of a target
        log.exception("the reference %s failed for %d requests", version, len(prompts))
        return [Answer(None, "", f"reference {version} failed: {type(e).__name__}: {e}") for _ in prompts]
    if len(answers) != len(prompts):
        why = f"reference {version} gave {len(answers)} answers to {len(prompts)} prompts"
        log.error("%s", why)
        return [Answer(None, "", why) for _ in prompts]
    return answers


def _before(router: Router, prompt: str, embedding: list[float]) -> Verdict:
    """The router's verdict on a prompt; one it cannot score (an embedding of another size than its prompt model's,
    none at all) goes to the reference, the target trusted with anything, and the decision says why."""
    try:
        return router.before(prompt_features(prompt, embedding))
    except RoutingError as e:
        return Verdict(REFERENCE, 1.0, router.gate.prompt_gate, f"the prompt could not be scored: {e}")


def _decoded(engine: _Engine | None, results: Sequence[Generated | None]) -> list[str]:
    """The texts of ``results`` by ``engine``'s tokenizer ("" for a row without a result)."""
    if engine is None:
        return ["" for _ in results]
    tok = engine.serving.loaded.tokenizer
    return ["" if g is None else tok.decode(g.token_ids, skip_special_tokens=True) for g in results]


def _position(msg: Message) -> Position:
    """((topic, partition), offset) of a request, as the OffsetBook keys it."""
    return (msg.topic() or REQUESTS, msg.partition() or 0), msg.offset() or 0
