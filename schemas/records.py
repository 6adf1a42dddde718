"""Typed records of the Avro contract: one TypedDict per record (its newest version), one Literal per enum.

Generated from schemas/avro/*.avsc by ``python -m evostream.schemas.typegen``: do not edit by hand."""

from __future__ import annotations

from typing import Literal, TypeAlias, TypedDict

FinishReason: TypeAlias = Literal["STOP", "LENGTH", "ERROR", "ESCALATED"]


class CompletionTimings(TypedDict):
    """CompletionTimings"""

    queue_us: int
    """From submitted_at to the start of work."""
    prefill_us: int
    """Prompt encoding / first forward pass."""
    decode_us: int
    """All decoding steps together."""
    total_us: int
    """From the start of work to the completion."""


AnswerRole: TypeAlias = Literal["ANSWER", "SHADOW"]


class Completion(TypedDict):
    """The outcome of one request: its text or its error. Topic evo.completions, key = trace_id. v2 adds
    output_token_ids; v3 adds the ESCALATED finish reason (a self model's partial answer, left when the router moved the
    request to a stronger model mid-answer), cached and cached_from (an answer served from the response cache), and
    cost_usd; v4 adds role (SHADOW: a staged version's answer to a mirrored request, never returned to the client),
    rollout_id and template_version."""

    trace_id: str
    """Id of the generation; its steps are on evo.steps under this key."""
    request_id: str
    """The InferenceRequest answered."""
    reply_to: str
    """Copied from the request so the client can find its reply."""
    tenant: str
    """Copied from the request."""
    model_version: str
    """Registry version of the model that served the request."""
    output_text: str
    """Generated text (empty on error)."""
    token_count: int
    """Number of generated tokens (= GenerationStep events for this trace)."""
    output_token_ids: list[int]
    """The generated token ids, in order (v2; empty in v1 records)."""
    prompt_token_count: int
    """Number of prompt tokens."""
    prompt_surprisal_bits: float | None
    """Mean per-token surprisal of the prompt under the model, bits (null where not computable)."""
    prompt_embedding: list[float]
    """384-d MiniLM sentence embedding of the prompt (empty if the encoder is off)."""
    finish_reason: FinishReason
    """STOP = end-of-sequence token; LENGTH = max_new_tokens reached; ERROR = see error. ESCALATED: the router moved the
    request to another target mid-answer; this is the partial answer, and the request's answer is a later Completion of
    the same request_id."""
    error: str | None
    """Why the request failed, when finish_reason is ERROR."""
    timings: CompletionTimings
    """Where the time went, microseconds."""
    completed_at_us: int
    """Producer wall clock at completion, microseconds since the Unix epoch."""
    cached: bool
    """True when no model generated this answer: the response cache served the answer of an earlier request with a
    similar prompt (cached_from)."""
    cached_from: str | None
    """The trace whose answer a cached Completion repeats (null unless cached)."""
    cost_usd: float
    """What this answer cost at the configured price table (its prompt and output tokens at its model's prices; 0 for a
    cached answer or with no price for the model)."""
    role: AnswerRole
    """ANSWER: an answer to its request (or an ESCALATED partial one). SHADOW: a staged or canary version's answer to a
    mirrored copy of the request, generated for comparison only: it has its own trace_id, and clients waiting on
    reply_to skip it (v4)."""
    rollout_id: str | None
    """The rollout that sent this request to the candidate version (a canary answer or a shadow one); null otherwise
    (v4)."""
    template_version: str | None
    """The governed prompt template (template/<name> version) the request's prompt was rendered with; null when it named
    none (v4)."""


class DeadLetter(TypedDict):
    """A record that could not be processed, kept with the reason so that nothing blocks a partition and nothing is
    lost. Topic evo.dlq, key = the original key. v2 keeps at most the first 64 KiB of the value (and of the key), with
    the whole value's size and SHA-256: a record near the broker's size limit wrapped whole would itself be too large to
    produce."""

    source_topic: str
    """Topic the record was read from."""
    partition: int
    """Its partition."""
    offset: int
    """Its offset."""
    original_key: bytes | None
    """The record's key bytes (its first 64 KiB, v2)."""
    raw_value: bytes | None
    """The record's value bytes as read (its first 64 KiB, v2: see raw_truncated)."""
    error_type: str
    """Class of the error, e.g. UnknownFingerprintError."""
    error: str
    """Human-readable reason."""
    consumer: str
    """The consumer group or service that gave up on it."""
    failed_at_us: int
    """When, microseconds since the Unix epoch."""
    raw_size: int | None
    """Size in bytes of the whole value as read (v2; null when it had none, and in v1 records)."""
    raw_sha256: str | None
    """SHA-256 (hex) of the whole value as read (v2; null when it had none, and in v1 records)."""
    raw_truncated: bool
    """Whether raw_value or original_key holds only the first 64 KiB of the record's bytes (v2)."""


class DriftStatistic(TypedDict):
    """DriftStatistic"""

    name: str
    """e.g. embedding_mmd, vocabulary_js, new_token_rate, intent_shift."""
    value: float
    """The statistic's value on this window."""
    threshold: float
    """Value above which it fires."""
    p_value: float | None
    """Permutation p-value where computed."""
    fired: bool
    """value > threshold (and p_value below the policy's alpha, where computed)."""


class DriftReport(TypedDict):
    """Comparison of a current window against a reference window. Topic evo.drift, key = model_version."""

    model_version: str
    """The model version whose traffic was compared."""
    reference_start_us: int
    """Reference window start, microseconds since the Unix epoch."""
    reference_end_us: int
    """Reference window end."""
    window_start_us: int
    """Current window start."""
    window_end_us: int
    """Current window end."""
    sample_count: int
    """Requests in the current window."""
    statistics: list[DriftStatistic]
    """Every statistic computed, fired or not."""
    fired: bool
    """True when any statistic fired."""
    produced_at_us: int
    """Processor wall clock, microseconds since the Unix epoch."""


AttentionSignal: TypeAlias = Literal["ENTROPY", "OUTPUT_NORM", "NONE"]


class GenerationStep(TypedDict):
    """Telemetry of one generated token, computed on the model's device inside generation. Topic evo.steps, key =
    trace_id. Per-layer and per-head statistics are packed float32 (little-endian, row-major) so that a step decodes in
    microseconds whatever the model's size; schemas.tensors unpacks them into numpy arrays. v2 adds hidden_sketch."""

    trace_id: str
    """Id of one generation (one request served by one model version)."""
    request_id: str
    """The InferenceRequest this step answers."""
    model_version: str
    """Registry version of the model that produced the token."""
    step: int
    """0-based index of the generated token within the trace."""
    token_id: int
    """Chosen token id in the model's vocabulary."""
    token_text: str
    """The chosen token decoded alone (may be a partial UTF-8 sequence rendered with U+FFFD)."""
    logprob: float
    """Natural-log probability of the chosen token under the raw (untempered) distribution."""
    entropy_bits: float
    """Shannon entropy in bits of the full-vocabulary distribution from raw logits."""
    top1_top2_margin: float
    """Probability of the most likely token minus that of the second."""
    topk_mass: float
    """Probability mass of the k most likely tokens (k = topk_k)."""
    topk_k: int
    """The k used for topk_mass."""
    surprisal_bits: float
    """-log2 p(chosen token): information content of the choice."""
    num_layers: int
    """Transformer layers reporting statistics: the length of every per-layer field."""
    num_heads: int
    """Attention heads per layer: the second dimension of head_attention_entropy."""
    layer_hidden_l2: bytes
    """Per layer: L2 norm of the newest position's hidden-state output. Packed float32 little-endian, length
    num_layers."""
    layer_hidden_maxabs: bytes
    """Per layer: max |x| of the newest position's hidden state. Packed float32 little-endian, length num_layers."""
    layer_nonfinite: list[int]
    """Per layer: count of NaN or Inf values in the newest position's hidden state."""
    head_attention_entropy: bytes
    """Per layer, per head: entropy in bits of the newest query's attention distribution, or the signal named by
    attention_signal. Packed float32 little-endian, row-major [num_layers, num_heads]; empty when attention_signal is
    NONE."""
    attention_signal: AttentionSignal
    """Which per-head utilization signal this event carries."""
    ffn_sparsity: bytes
    """Per layer: fraction of FFN activations that are (near) zero at the newest position. Packed float32 little-endian,
    length num_layers; empty when not measured."""
    latency_us: int
    """Wall time of this decoding step, microseconds."""
    peak_memory_bytes: int
    """Peak device memory so far in this trace (CUDA) or process RSS peak (CPU), bytes."""
    emitted_at_us: int
    """Producer wall clock when the step was computed, microseconds since the Unix epoch."""
    hidden_sketch: bytes
    """A sketch of the hidden state for a learned risk probe: the newest position's hidden state of the middle and the
    last layer, each through a fixed seeded random projection (producers/sketch.py), packed float16 little-endian,
    length 2 x dim; empty when off (and in v1 records)."""


class GovernanceEvent(TypedDict):
    """One fact of model governance (enrolment, policy, registration, validation, approval, promotion, rollback). Topic
    evo.governance: one partition, kept forever, never compacted, key = model_name. All events form ONE hash chain in
    topic order: sequence is gapless from 0, prev_hash is the previous event's hash, hash = SHA-256(prev_hash bytes ||
    canonical bytes of header and payload), signature = Ed25519 over the hash bytes by the key key_id of the actor (see
    consumers/governance/events.py for the canonical bytes). v2 adds hash; v1 records decode with hash '' and cannot be
    verified."""

    event_id: str
    """Unique id (UUID) of the event."""
    model_name: str
    """The governed model family ('*' for actor and policy events): the record key."""
    sequence: int
    """0-based, gapless position in the governance log."""
    type: str
    """ActorEnrolled, ActorRevoked, PolicyChanged, ModelRegistered, CandidateProposed, ValidationCompleted,
    ApprovalRequested, ApprovalGranted, ApprovalRejected, Promoted, RolledBack."""
    type_version: int
    """Version of the payload's meaning for this type; old versions are upcast on read."""
    actor: str
    """Who caused the event: an enrolled actor id."""
    reason: str
    """Why, in the actor's words."""
    payload_json: str
    """Type-specific payload as canonical JSON (sorted keys, no spaces)."""
    occurred_at_us: int
    """When it happened, microseconds since the Unix epoch."""
    prev_hash: str
    """Hex SHA-256 of the previous event ('' for the first)."""
    key_id: str
    """Id of the key that signed the event (hex SHA-256 of its raw public key, first 16 bytes)."""
    signature: str
    """Hex signature of the hash bytes (see signature_alg)."""
    signature_alg: str
    """Signature algorithm."""
    hash: str
    """Hex SHA-256(prev_hash bytes || canonical bytes); '' on records written as v1."""


class GovernanceSnapshot(TypedDict):
    """The governance projection (registry of actors, policy, models and versions) folded up to one event of the
    governance log, so a reader can replay only the tail after it. Topic evo.governance.snapshots (compacted), key =
    log_topic: the latest snapshot per log is kept. A cache: the log stays the truth, and audit replays it from the
    start."""

    log_topic: str
    """The governance topic this snapshot folds (evo.governance): the record key."""
    offset: int
    """Offset in log_topic of the last event folded in; the tail starts at offset + 1."""
    sequence: int
    """Sequence of that event (the projection's head)."""
    head_hash: str
    """Hash of that event: a reader checks the log still has it at offset before trusting the snapshot."""
    registry_json: str
    """The projection as canonical JSON (Registry.to_json in consumers/governance/projection.py)."""
    written_at_us: int
    """When the snapshot was taken, microseconds since the Unix epoch."""


class GenerationParams(TypedDict):
    """GenerationParams"""

    max_new_tokens: int
    """Upper bound on generated tokens."""
    do_sample: bool
    """False = greedy decoding."""
    temperature: float
    """Softmax temperature when sampling (> 0)."""
    top_k: int
    """Keep the k most likely tokens when sampling; 0 = off."""
    top_p: float
    """Nucleus sampling mass in (0, 1]; 1 = off."""
    seed: int | None
    """RNG seed for reproducible sampling."""


class InferenceRequest(TypedDict):
    """A client's request to generate text. Topic evo.requests, key = request_id. v2 adds template: the governed prompt
    template to render the prompt with."""

    request_id: str
    """Client-chosen unique id (UUID recommended); the reply carries it back."""
    prompt: str
    """The input text, UTF-8."""
    params: GenerationParams
    """Generation parameters."""
    tenant: str
    """Who asked; used for quotas and per-tenant drift."""
    reply_to: str
    """Key under which the Completion is published on evo.completions' reply routing (defaults to request_id)."""
    submitted_at_us: int
    """Client wall clock at submission, microseconds since the Unix epoch."""
    template: str | None
    """A governed prompt template: 'name' (its production version) or 'name@version'; the service renders the prompt
    into it before generating. Null: the prompt is used as it is (v2)."""


class NeuronCounts(TypedDict):
    """How often each FFN neuron of a model fired (activation > 0) over many decoding steps, sent by the inference
    producer after each batch instead of per step. Topic evo.neurons, key = model_version."""

    snapshot_id: str
    """Unique id of this snapshot (processors skip one they have already counted)."""
    model_version: str
    """Registry version of the model."""
    steps: int
    """Sequence-steps covered: one per active batch row per decoding step."""
    num_layers: int
    """Generating layers."""
    ffn_width: int
    """FFN neurons per layer."""
    counts: bytes
    """Per layer, per neuron: steps on which it fired; little-endian int32, row-major [num_layers, ffn_width]."""
    window_start_us: int
    """First step covered, microseconds since the Unix epoch."""
    window_end_us: int
    """Last step covered, microseconds since the Unix epoch."""


OutcomeLabel: TypeAlias = Literal["RIGHT", "WRONG", "GRADED"]


OutcomeSource: TypeAlias = Literal["SUITE", "VALIDATION", "REFERENCE", "HUMAN", "JUDGE"]


class Outcome(TypedDict):
    """Whether a generation was right, learned after the fact: from the task suite, a validation run, a reference
    answer, a person or a judge. Labels arrive late (hours after the answer is normal) and may be repeated. Topic
    evo.outcomes, key = trace_id. A retried write carries the same outcome_id and counts once; for each trace and actor
    the latest label (recorded_at_us, then offset) stands."""

    outcome_id: str
    """Id of this label, chosen by its writer: the same id again is a retry of the same write (a person's click, a suite
    run's answer), recorded once."""
    trace_id: str
    """The generation judged (its steps are on evo.steps under this key)."""
    model_version: str
    """The model version that generated the trace, from its Completion."""
    label: OutcomeLabel
    """RIGHT (score 1), WRONG (score 0), or GRADED (score in between)."""
    score: float
    """How right the answer was, in [0, 1]: 1 for RIGHT, 0 for WRONG."""
    source: OutcomeSource
    """Where the truth came from."""
    actor: str
    """Who said so: a governance actor, or the service that knew the answer (suite, validation)."""
    note: str
    """Why, in the actor's words (may be empty)."""
    recorded_at_us: int
    """Writer's wall clock when the label was given, microseconds since the Unix epoch."""


class ProfileDelta(TypedDict):
    """What the step blocks of one model version that one stream-processor batch read from one source partition add to
    the model's profiling window: one row per block (its partial aggregates), merged per model by the profiling agent.
    v2 replaces v1's per-step columns (dropped) with the rows; a v1 record reads as one of no rows (source_partition
    -1). Internal to the processors: topic <app_id>-profile-deltas, key = model_version."""

    model_version: str
    """Registry version of the model."""
    num_layers: int
    """Generating layers of every block in this record."""
    num_heads: int
    """Attention heads per layer of every block in this record."""
    source_partition: int
    """The evo.step-blocks partition the blocks were read from (-1 in a v1 record): the profiling state keeps, per
    source partition, the highest block offset merged."""
    offsets: list[int]
    """Per row: the Kafka offset of its block on source_partition, strictly increasing."""
    window_start_us: list[int]
    """Per row: the start of the tumbling window of the block's first step (the whole block counts there)."""
    block_steps: list[int]
    """Per row: the block's steps."""
    first_us: list[int]
    """Per row: the earliest emitted_at_us of the block's steps."""
    last_us: list[int]
    """Per row: the latest emitted_at_us of the block's steps."""
    new_trace: list[bool]
    """Per row: true where the block's trace was not yet counted in the row's window."""
    signals: list[str]
    """Per row: the block's attention_signal."""
    head_steps: list[int]
    """Per row: the block's steps whose head signal is measured and finite."""
    layer_steps: list[int]
    """Per row: the block's steps whose layer_hidden_l2 is measured and finite."""
    head_sum: bytes
    """Per row, layer and head: the head signal summed over the row's head_steps; little-endian float64, row-major
    [rows, num_layers, num_heads]."""
    layer_changed: bytes
    """Per row and layer: of the row's layer_steps, those on which the layer changed the hidden-state norm materially
    against the layer below; little-endian int64, row-major [rows, num_layers]."""
    path_rows: list[int]
    """Per token n-gram: the row it belongs to."""
    paths: list[str]
    """Per token n-gram: its token ids, space-separated."""
    path_counts: list[int]
    """Per token n-gram: how many times it ends in the row's block."""


class TokenPath(TypedDict):
    """TokenPath"""

    token_ids: list[int]
    """The n-gram."""
    count: int
    """Occurrences in the window."""


class ProfileSnapshot(TypedDict):
    """Profiling aggregate of one model version over a window of steps. Topic evo.profiles (compacted), key =
    model_version."""

    model_version: str
    """The profiled model version."""
    window_start_us: int
    """First event time included, microseconds since the Unix epoch."""
    window_end_us: int
    """Last event time included, microseconds since the Unix epoch."""
    trace_count: int
    """Traces seen in the window."""
    step_count: int
    """Step events seen in the window."""
    head_utilization: list[list[float]]
    """Per layer, per head: utilization in [0, 1] (1 - mean normalized attention entropy, or the normalized output-norm
    share)."""
    ffn_neuron_activation_counts: list[list[int]]
    """Per layer, per FFN neuron: how many steps activated it (empty when not collected)."""
    dormant_neuron_fraction: list[float]
    """Per layer: fraction of FFN neurons never (or below threshold) active in the window."""
    layer_frequency: list[float]
    """Per layer: share of steps on which the layer changed the hidden state materially."""
    top_token_paths: list[TokenPath]
    """Most frequent token n-grams generated in the window."""
    produced_at_us: int
    """Processor wall clock, microseconds since the Unix epoch."""


Severity: TypeAlias = Literal["INFO", "WARNING", "CRITICAL"]


RiskStage: TypeAlias = Literal["EARLY", "FINAL"]


class RiskAlert(TypedDict):
    """A RiskReport that crossed policy. Topic evo.alerts, key = trace_id. v2 adds reason."""

    trace_id: str
    """The assessed generation."""
    request_id: str
    """Its request."""
    model_version: str
    """Model version that generated it."""
    severity: Severity
    """How loud the alert is."""
    stage: RiskStage
    """EARLY or FINAL, as in the report."""
    score: float
    """Risk in [0, 1]."""
    flags: list[str]
    """The flags that crossed policy."""
    blamed_layers: list[int]
    """Layers whose statistics drove the score."""
    reason: str
    """One line for a human: what was seen, where (e.g. 'NaN/Inf in the hidden state of layer 2')."""
    policy: str
    """Name and version of the policy that raised the alert."""
    produced_at_us: int
    """Processor wall clock, microseconds since the Unix epoch."""


class RiskReport(TypedDict):
    """Risk assessment of one trace, mid-generation (early) or at its end (final). Topic evo.risk, key = trace_id. v2
    adds reason, steps and policy."""

    trace_id: str
    """The assessed generation."""
    request_id: str
    """Its request."""
    model_version: str
    """Model version that generated it."""
    stage: RiskStage
    """EARLY = from the steps seen so far; FINAL = after the Completion."""
    step: int | None
    """Last step included (EARLY reports)."""
    score: float
    """Risk in [0, 1]."""
    flags: list[str]
    """Named findings, e.g. high_entropy, nonfinite_hidden, repetition_loop."""
    blamed_layers: list[int]
    """Layers whose statistics drove the score."""
    reason: str
    """One line for a human: what was seen, where (e.g. 'NaN/Inf in the hidden state of layer 2')."""
    steps: int
    """Step events included in the assessment."""
    policy: str
    """Name and version of the policy the score was judged by."""
    produced_at_us: int
    """Processor wall clock, microseconds since the Unix epoch."""


RouteStage: TypeAlias = Literal["ADMISSION", "PROMPT", "GENERATION"]


class RouteCandidate(TypedDict):
    """RouteCandidate"""

    target: str
    """self, reference, cache or refused."""
    model_version: str
    """The version that would answer (an external model's name for an HTTP reference; empty for none)."""
    score: float
    """The policy's score of this candidate: for self, P(the self model's answer is wrong); for the others, what the
    policy says of them (the reference's is 0)."""
    cost_usd: float
    """The price table's estimate of answering with this candidate."""


class RouteDecision(TypedDict):
    """Why a request went where it went: one record per decision of the router (before generation, mid-answer, or at the
    front door: a cache hit or a refusal). Topic evo.routes, key = request_id. Replayed, the log answers 'why did this
    request go there', and a new routing policy can be scored on the history it would have decided."""

    decision_id: str
    """Id of this decision (a retried write carries the same id)."""
    request_id: str
    """The InferenceRequest (or API request) decided."""
    trace_id: str
    """The generation this decision concerns: the self model's trace for a mid-answer escalation, the answering trace
    otherwise (empty for a refusal)."""
    tenant: str
    """Whose request it is (budgets and limits are per tenant)."""
    route: str
    """The route's name: a self target and a reference target with their policy and level."""
    stage: RouteStage
    """ADMISSION: at the front door (a refusal by budget or rate limit, or a cache hit); PROMPT: before generation, from
    the prompt's features; GENERATION: mid-answer, from the token risk of the self model's partial answer."""
    candidates: list[RouteCandidate]
    """What the router weighed."""
    level: int
    """The independence level in force (0: everything goes to the reference)."""
    gate: float
    """The level's gate on the score that decided (the prompt gate at PROMPT, the token gate at GENERATION)."""
    chosen: str
    """The target chosen: self, reference, cache or refused."""
    chosen_version: str
    """The version that answers (empty for a refusal)."""
    reason: str
    """Why, in one line (the score against the gate, the budget exhausted, the cached prompt's similarity)."""
    policy_version: str
    """The routing policy that decided (its artifact's SHA-256; empty for none)."""
    step: int | None
    """GENERATION: the self model's step at which the request moved."""
    risk: float | None
    """The score that decided (P(wrong) before or during generation; a cache hit's similarity)."""
    retry_after_s: float | None
    """A refusal: seconds until the tenant's limit lets a request in again."""
    decided_at_us: int
    """Writer's wall clock at the decision, microseconds since the Unix epoch."""


class ShadowComparison(TypedDict):
    """A mirrored request answered by both the production version and a staged (or canary) one, compared. Topic
    evo.shadow, key = request_id. The production answer was returned to the client; the candidate's (a SHADOW
    Completion) never is. Risk and labelled outcomes arrive later on their own topics and are joined by trace_id and
    request_id when comparisons are summarised (evostream compare)."""

    request_id: str
    """The request mirrored."""
    tenant: str
    """Copied from the request."""
    rollout_id: str | None
    """The rollout that mirrored it; null for a shadow of the staging version outside a rollout."""
    production_version: str
    """The version whose answer was returned."""
    candidate_version: str
    """The staged version that answered the mirror."""
    production_trace_id: str
    """The returned answer's trace (its Completion and steps)."""
    candidate_trace_id: str
    """The shadow answer's trace (its SHADOW Completion and steps)."""
    agree: bool
    """Both answered without error and their texts are exactly equal."""
    production_tokens: int
    """Tokens the production version generated."""
    candidate_tokens: int
    """Tokens the candidate generated."""
    production_us: int
    """The production answer's generation time (prefill and decode), microseconds."""
    candidate_us: int
    """The shadow answer's generation time (prefill and decode), microseconds."""
    production_error: str | None
    """Why the production answer failed, if it did."""
    candidate_error: str | None
    """Why the shadow answer failed, if it did."""
    compared_at_us: int
    """Producer wall clock when both answers were in, microseconds since the Unix epoch."""


class StepBlock(TypedDict):
    """Consecutive steps of one trace that the producer's emitter sent together (producers/blocking.py), as packed
    columns: row i of every per-step column is step i of the block, and together they carry exactly the fields of that
    step's GenerationStep record (schemas.blocks.columns decodes a block, StepColumns.row gives each step's
    GenerationStep back). Topic evo.step-blocks, key = trace_id: written for the stream processors, one record per block
    of a trace's steps instead of one per token. A block is homogeneous: its steps share the trace, request, model
    version, shape (num_layers, num_heads, sketch width), attention signal, topk_k and which optional columns were
    measured; steps that differ travel in another block. Every step is also on evo.steps as its own GenerationStep
    record."""

    trace_id: str
    """Id of one generation; every step of the block belongs to it. The record key."""
    request_id: str
    """The InferenceRequest the steps answer."""
    model_version: str
    """Registry version of the model that produced the steps."""
    count: int
    """n: the number of steps in the block, at least 1; every per-step column has n rows."""
    num_layers: int
    """L: transformer layers reporting statistics, shared by every step of the block (the width of every per-layer
    column)."""
    num_heads: int
    """H: attention heads per layer, shared by every step of the block (the last dimension of
    head_attention_entropy)."""
    topk_k: int
    """The k used for topk_mass, shared by every step of the block."""
    attention_signal: AttentionSignal
    """Which per-head utilization signal every step of the block carries."""
    token_text: list[str]
    """Per step: the chosen token decoded alone (as GenerationStep.token_text), n strings."""
    step: bytes
    """Per step: 0-based index of the token within the trace, strictly increasing. Packed int32 little-endian, length
    n."""
    token_id: bytes
    """Per step: chosen token id in the model's vocabulary. Packed int32 little-endian, length n."""
    logprob: bytes
    """Per step: natural-log probability of the chosen token under the raw distribution. Packed float32 little-endian,
    length n."""
    entropy_bits: bytes
    """Per step: Shannon entropy in bits of the full-vocabulary distribution. Packed float32 little-endian, length n."""
    top1_top2_margin: bytes
    """Per step: probability of the most likely token minus that of the second. Packed float32 little-endian, length
    n."""
    topk_mass: bytes
    """Per step: probability mass of the topk_k most likely tokens. Packed float32 little-endian, length n."""
    surprisal_bits: bytes
    """Per step: -log2 p(chosen token). Packed float32 little-endian, length n."""
    layer_hidden_l2: bytes
    """Per step and layer: L2 norm of the newest position's hidden-state output. Packed float32 little-endian, row-major
    [n, num_layers]; empty when not measured."""
    layer_hidden_maxabs: bytes
    """Per step and layer: max |x| of the newest position's hidden state. Packed float32 little-endian, row-major [n,
    num_layers]; empty when not measured."""
    layer_nonfinite: bytes
    """Per step and layer: count of NaN or Inf values in the newest position's hidden state. Packed int32 little-endian,
    row-major [n, num_layers]."""
    head_attention_entropy: bytes
    """Per step, layer and head: the signal named by attention_signal. Packed float32 little-endian, row-major [n,
    num_layers, num_heads]; empty when attention_signal is NONE."""
    ffn_sparsity: bytes
    """Per step and layer: fraction of FFN activations that are (near) zero at the newest position. Packed float32
    little-endian, row-major [n, num_layers]; empty when not measured."""
    hidden_sketch: bytes
    """Per step: the hidden-state sketch of GenerationStep.hidden_sketch (D values, the same D for every step). Packed
    float16 little-endian, row-major [n, D]: D is the length in bytes / (2 n); empty when off."""
    latency_us: bytes
    """Per step: wall time of the decoding step, microseconds. Packed int64 little-endian, length n."""
    peak_memory_bytes: bytes
    """Per step: peak device memory so far in the trace (CUDA) or process RSS peak (CPU), bytes. Packed int64 little-
    endian, length n."""
    emitted_at_us: bytes
    """Per step: producer wall clock when the step was computed, microseconds since the Unix epoch. Packed int64 little-
    endian, length n."""
    flushed_at_us: int
    """Producer wall clock when the block was built and handed to Kafka, microseconds since the Unix epoch (at or after
    every step's emitted_at_us)."""
