"""The processors worker as users run it (``evostream process``, a real subprocess on the real broker), the real
inference service serving a model until every prompt is answered, and a reader of a topic from its start: shared by
the processors' end-to-end tests and the evolution end-to-end test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evostream.core.bus.consumer import EventConsumer
from evostream.models.loading import LoadedModel
from evostream.producers.client import InferenceClient
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.service import InferenceService, ServeOptions
from evostream.schemas.codec import RecordCodec

CLI = [sys.executable, "-m", "evostream.cli"]  # the CLI of the checkout under test, not the one on PATH
BLOCK = RecordCodec("StepBlock")


def as_block(*steps: Mapping[str, Any]) -> bytes:
    """GenerationStep records of one trace, in order, as one StepBlock record: what the producer sends the processors
    (``schemas/blocks.py``). Packed fields are joined unchecked, so a malformed step makes a malformed block, as a
    faulty producer's would be."""
    first = steps[0]

    def joined(field: str) -> bytes:
        return b"".join(bytes(s[field] or b"") for s in steps)

    def packed(field: str, dtype: str) -> bytes:
        return np.asarray([s[field] for s in steps], dtype=dtype).tobytes()

    return BLOCK.encode(
        {
            **{k: first[k] for k in ("trace_id", "request_id", "model_version", "num_layers", "num_heads", "topk_k")},
            "attention_signal": first["attention_signal"],
            "count": len(steps),
            "token_text": [s["token_text"] for s in steps],
            "step": packed("step", "<i4"),
            "token_id": packed("token_id", "<i4"),
            **{f: packed(f, "<f4") for f in ("logprob", "entropy_bits", "top1_top2_margin", "topk_mass")},
            "surprisal_bits": packed("surprisal_bits", "<f4"),
            **{f: joined(f) for f in ("layer_hidden_l2", "layer_hidden_maxabs", "head_attention_entropy")},
            "ffn_sparsity": joined("ffn_sparsity"),
            "hidden_sketch": joined("hidden_sketch"),
            "layer_nonfinite": b"".join(np.asarray(s["layer_nonfinite"], dtype="<i4").tobytes() for s in steps),
            **{f: packed(f, "<i8") for f in ("latency_us", "peak_memory_bytes", "emitted_at_us")},
            "flushed_at_us": time.time_ns() // 1000,
        }
    )


class Worker:
    def __init__(self, kafka: str, tmp: Path) -> None:
        self.env = {
            **os.environ,
            "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
            "EVOSTREAM_PROCESSORS_DIR": str(tmp),
            "EVOSTREAM_PROCESSORS_APP_ID": f"test-processors-{uuid.uuid4().hex[:8]}",
            "EVOSTREAM_PROFILE_WINDOW_S": "2",
            "EVOSTREAM_DRIFT_REFERENCE_SIZE": "96",
            "EVOSTREAM_DRIFT_WINDOW_SIZE": "48",
        }
        self.log = tmp / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "process", "--loglevel", "INFO"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 90
        while b"Worker]: Ready" not in self.log.read_bytes():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "worker not ready in 90 s:\n" + self.log.read_text()[-3000:]
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.proc = None


def read(kafka: str, topic: str, schema: str, until: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Records of ``topic`` from the start, until ``until(records)`` holds or time is up."""
    codec = RecordCodec(schema)
    out: list[dict[str, Any]] = []
    with EventConsumer(kafka, f"test-{uuid.uuid4().hex}", [topic]) as consumer:
        deadline = time.monotonic() + timeout_s
        while not until(out) and time.monotonic() < deadline:
            # a shared topic may hold what other tests put there on purpose (undecodable bytes): not ours, skipped
            out += [r for m in consumer.poll_batch(1000, 0.3) if (r := codec.decode_or_skip(m.value())) is not None]
    return out


def serve(
    kafka: str, lm: LoadedModel, prompts: list[str], max_new_tokens: int, embedder: PromptEmbedder | None = None
) -> list[dict[str, Any]]:
    """Serve ``lm`` with the real inference service until each prompt has its Completion."""
    service = InferenceService(kafka, lm, embedder, ServeOptions(max_batch=8, max_wait_ms=10))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        client = InferenceClient(kafka)
        sent = [client.publish(p, max_new_tokens=max_new_tokens) for p in prompts]
        return [client.await_reply(s, timeout_s=60) for s in sent]
    finally:
        service.stop_event.set()
        thread.join(60)
