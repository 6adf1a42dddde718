"""The stream processors' peer: a PyFlink job doing the risk agent's keyed fold on the same records, measured alike.

The job (Python UDFs in THREAD execution mode, ``python.execution-mode: thread``: the functions run in the task
manager's JVM through an embedded interpreter, no Beam worker process):

  KafkaSource (the topic from its start, bounded by its end offsets when the job starts)
  -> decode each record with the project's Avro codec (``schemas.codec.RecordCodec``), steps checked like the agent's
  -> key_by trace_id
  -> KeyedProcessFunction: a ValueState holds the trace's risk state (the JSON-able dict the Faust agent keeps in its
     table) and each record is folded into it with the project's pure fold, ``RiskTracker`` with ``load_policies()``:
     ``on_steps`` for a GenerationStep (``--records steps``), ``on_block`` for a StepBlock (``--records blocks``,
     decoded by ``schemas.blocks.columns``; where the tracker has no ``on_block`` yet, ``on_steps`` over the
     block's rows, and the JSON line says ``"fold_api": "on_steps(rows)"``);
     its RiskReports and RiskAlerts are Avro-encoded as the agent's are
  -> a counting map (reports, alerts) -> a discarding sink.

``--fold none`` keeps the source, the decoding and the key_by but folds nothing and keeps no state: the job's own
per-record floor, as bench.faust_floor is Faust's.

Parallelism 1 by default (one slot, like one Faust worker); ``--parallelism N`` for more. A record's position in its
subtask's input stands in for its Kafka offset in the fold (it increases along each trace as an offset does; Flink's
checkpoints, not the state's offsets, make a replay exact).

It prints one JSON line: ``records`` and ``steps`` folded, ``reports`` and ``alerts`` the sink counted, ``seconds``
from the first record's fold to the last one's by the job's own clock (``time.time()`` in the functions),
``steps_per_s``, ``cpu_s`` (user + system CPU of the whole process tree, this python and the JVM with its embedded
interpreter, read from /proc and interpolated to the same two moments), ``cpu_us_per_step``, and for context
``total_cpu_s`` (the tree's CPU from the JVM's start to the job's end) and ``wall_s``. It exits 1 when the job folded
fewer or more than ``--expect-records`` / ``--expect-steps``.

The job runs in the PyFlink environment, not the project's (apache-flink pins its own numpy, pandas and Beam):
``bench/pyflink_env.sh`` creates it, fetches the Kafka connector jar and prints its python. The checkout is put on
PYTHONPATH, so the job folds with the checkout's code. From the project's environment, ``run_peer`` runs it as a
subprocess and returns the JSON line as a dict; it hands the peer the broker's login (the ``processors`` principal)
through EVOSTREAM_KAFKA_USERNAME / _PASSWORD / _MECHANISM, which the peer also reads when run by hand.

Run (a topic already filled, e.g. by bench.processors' Traffic):
  PY=$(bash bench/pyflink_env.sh)
  PYTHONPATH=$PWD $PY -m bench.flink_peer --bootstrap 127.0.0.1:9092 --topic evo.steps \\
      --expect-records 20000 --expect-steps 20000 [--records steps|blocks] [--parallelism 1] [--fold risk|none]
"""

from __future__ import annotations

import argparse
import json
import os
import site
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter, process_tree

ROOT = Path(__file__).resolve().parent.parent
ENV_SCRIPT = ROOT / "bench" / "pyflink_env.sh"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evostream"
VENV = Path(os.environ.get("EVOSTREAM_PYFLINK_VENV") or CACHE / "pyflink")
JARS = CACHE / "flink-jars"
CONNECTOR = "flink-sql-connector-kafka-5.0.0-2.2.jar"
"""The Kafka connector jar bench/pyflink_env.sh fetches (keep the two in step)."""
SETUP = "bash bench/pyflink_env.sh"


# --- the project's side: run the peer as a subprocess -------------------------------------------------------------


def run_peer(
    bootstrap: str,
    topic: str,
    records: int,
    steps: int,
    *,
    kind: str = "steps",
    parallelism: int = 1,
    fold: str = "risk",
    timeout_s: float = 1800.0,
    python: Path | None = None,
) -> dict[str, Any]:
    """Run the PyFlink peer on ``topic`` (``records`` records holding ``steps`` steps, already produced) and return
    its JSON line as a dict; SystemExit with the command that sets the environment up where it is missing, and with
    the peer's last output where it fails. Call it from the project's environment: it logs the peer in as the
    ``processors`` principal of the broker's credentials, as the Faust worker does."""
    from evostream.core.bus.security import credentials

    py = python or VENV / "bin" / "python"
    jar = JARS / CONNECTOR
    if not py.exists() or not jar.exists():
        raise SystemExit(
            f"the PyFlink peer's environment is missing ({py if not py.exists() else jar}): set it up with `{SETUP}`"
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("EVOSTREAM_KAFKA_USERNAME", "EVOSTREAM_KAFKA_PASSWORD", "EVOSTREAM_KAFKA_MECHANISM"):
        env.pop(name, None)
    login = credentials(bootstrap, "processors")
    if login is not None:
        env |= {
            "EVOSTREAM_KAFKA_USERNAME": login.username,
            "EVOSTREAM_KAFKA_PASSWORD": login.password,
            "EVOSTREAM_KAFKA_MECHANISM": login.mechanism,
        }
    cmd = [
        str(py),
        "-m",
        "bench.flink_peer",
        f"--bootstrap={bootstrap}",
        f"--topic={topic}",
        f"--records={kind}",
        f"--expect-records={records}",
        f"--expect-steps={steps}",
        f"--parallelism={parallelism}",
        f"--fold={fold}",
        f"--connector-jar={jar}",
    ]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"the PyFlink peer did not finish within {timeout_s:.0f} s") from e
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        said = (done.stdout + done.stderr)[-3000:]
        raise SystemExit(f"the PyFlink peer failed (exit {done.returncode}):\n{said}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --- the peer's side (the PyFlink environment) ------------------------------------------------------------------


def _kafka_login() -> dict[str, str]:
    """The Java Kafka client's settings for the login in EVOSTREAM_KAFKA_USERNAME / _PASSWORD (/ _MECHANISM)."""
    user, password = os.environ.get("EVOSTREAM_KAFKA_USERNAME"), os.environ.get("EVOSTREAM_KAFKA_PASSWORD")
    if not user:
        return {}
    if password is None:
        raise SystemExit("EVOSTREAM_KAFKA_USERNAME is set but EVOSTREAM_KAFKA_PASSWORD is not")
    mechanism = os.environ.get("EVOSTREAM_KAFKA_MECHANISM", "SCRAM-SHA-512")
    # the SQL connector jar shades the Kafka client: its login modules live under Flink's package
    shaded = "org.apache.flink.kafka.shaded.org.apache.kafka.common.security"
    module = f"{shaded}.plain.PlainLoginModule" if mechanism == "PLAIN" else f"{shaded}.scram.ScramLoginModule"
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.jaas.config": f"{module} required username={json.dumps(user)} password={json.dumps(password)};",
    }


def cpu_between(sampler: CpuMeter, start: float, end: float) -> float:
    """The tree's CPU seconds from ``start`` to ``end`` (wall time), the nearest samples standing in outside them."""
    return (sampler.at(end, clamp=True) or 0.0) - (sampler.at(start, clamp=True) or 0.0)


def _job(args: argparse.Namespace, stats_dir: Path) -> None:
    """Build the job and run it to its end (the bounded source's last offsets)."""
    from pyflink.common import Configuration, Types, WatermarkStrategy
    from pyflink.common.serialization import ByteArraySchema
    from pyflink.datastream import (
        KeyedProcessFunction,
        MapFunction,
        RuntimeContext,
        StreamExecutionEnvironment,
    )
    from pyflink.datastream.connectors import Sink
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
    from pyflink.datastream.state import ValueStateDescriptor
    from pyflink.java_gateway import get_gateway

    kind, fold = args.records, args.fold == "risk"

    class Decode(MapFunction):  # type: ignore[misc]
        """Bytes -> the record the fold takes: a checked GenerationStep dict, or a block's StepColumns."""

        def open(self, runtime_context: RuntimeContext) -> None:
            from evostream.schemas.codec import RecordCodec

            if kind == "steps":
                from evostream.stream_processors.checks import check_step

                codec = RecordCodec("GenerationStep")

                def decode(value: bytes) -> Any:
                    rec = codec.decode(value)
                    check_step(rec)
                    return rec

            else:
                from evostream.schemas.blocks import columns  # type: ignore[attr-defined]

                codec = RecordCodec("StepBlock")

                def decode(value: bytes) -> Any:
                    return columns(codec.decode(value))

            self.decode = decode

        def map(self, value: bytes) -> Any:
            return self.decode(bytes(value))

    class Fold(KeyedProcessFunction):  # type: ignore[misc]
        """The risk agent's fold of one trace, its state in a ValueState; times and counts written at close."""

        def open(self, runtime_context: RuntimeContext) -> None:
            from evostream.schemas.codec import RecordCodec
            from evostream.stream_processors.risk.policy import load_policies
            from evostream.stream_processors.risk.tracker import RiskTracker

            self.tracker = RiskTracker(load_policies())
            self.on_block = getattr(self.tracker, "on_block", None)
            self.report_codec, self.alert_codec = RecordCodec("RiskReport"), RecordCodec("RiskAlert")
            self.state = runtime_context.get_state(ValueStateDescriptor("risk", Types.PICKLED_BYTE_ARRAY()))
            self.subtask = uuid.uuid4().hex  # the subtask index is not reachable in thread mode
            self.first: float | None = None
            self.last: float | None = None
            self.position = self.records = self.steps = self.duplicates = self.rejected = 0

        def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[bytes]:
            now = time.time()
            if self.first is None:
                self.first = now
            self.position += 1
            now_us = int(now * 1e6)
            if not fold:
                self.records += 1
                self.steps += 1 if kind == "steps" else len(value)
                self.last = time.time()
                return
            if kind == "steps":
                out, n = self.tracker.on_steps(self.state.value(), [(value, self.position)], now_us), 1
            elif self.on_block is not None:
                out, n = self.on_block(self.state.value(), value, self.position, now_us), len(value)
            else:  # a tracker without on_block yet: the block's rows, each at its own position
                rows = [(row, self.position + i) for i, row in enumerate(value.rows())]
                self.position += len(rows) - 1
                out, n = self.tracker.on_steps(self.state.value(), rows, now_us), len(rows)
            self.state.update(out.state)
            self.records += 1
            self.steps += n - out.duplicates - len(out.rejected)
            self.duplicates += out.duplicates
            self.rejected += len(out.rejected)
            for report in out.reports:
                yield b"R" + self.report_codec.encode(report)
            for alert in out.alerts:
                yield b"A" + self.alert_codec.encode(alert)
            self.last = time.time()

        def close(self) -> None:
            body = {
                "first": self.first,
                "last": self.last,
                "records": self.records,
                "steps": self.steps,
                "duplicates": self.duplicates,
                "rejected": self.rejected,
            }
            (stats_dir / f"fold-{self.subtask}.json").write_text(json.dumps(body))

    class Count(MapFunction):  # type: ignore[misc]
        """Counts the reports and alerts on their way to the discarding sink."""

        def open(self, runtime_context: RuntimeContext) -> None:
            self.subtask = uuid.uuid4().hex  # the subtask index is not reachable in thread mode
            self.reports = self.alerts = 0

        def map(self, value: bytes) -> bytes:
            if value[:1] == b"R":
                self.reports += 1
            else:
                self.alerts += 1
            return value

        def close(self) -> None:
            body = {"reports": self.reports, "alerts": self.alerts}
            (stats_dir / f"count-{self.subtask}.json").write_text(json.dumps(body))

    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("pipeline.jars", Path(args.connector_jar).resolve().as_uri())
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(args.parallelism)
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(args.bootstrap)
        .set_topics(args.topic)
        .set_group_id(f"flink-peer-{uuid.uuid4().hex[:8]}")
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_bounded(KafkaOffsetsInitializer.latest())
        .set_value_only_deserializer(ByteArraySchema())
    )
    for key, value in _kafka_login().items():
        builder = builder.set_property(key, value)
    raw = env.from_source(
        builder.build(), WatermarkStrategy.no_watermarks(), "kafka", Types.PRIMITIVE_ARRAY(Types.BYTE())
    )
    if kind == "steps":

        def trace_of(rec: Any) -> str:
            return str(rec["trace_id"])

    else:

        def trace_of(rec: Any) -> str:
            return str(rec.trace_id)

    folded = (
        raw.map(Decode(), Types.PICKLED_BYTE_ARRAY())
        .key_by(trace_of, Types.STRING())
        .process(Fold(), Types.PRIMITIVE_ARRAY(Types.BYTE()))
        .map(Count(), Types.PRIMITIVE_ARRAY(Types.BYTE()))
    )
    discard = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
    folded.sink_to(Sink(discard))
    env.execute(f"evostream flink peer ({kind})")


def _fold_api(args: argparse.Namespace) -> str | None:
    """Which of the tracker's functions the job folded with."""
    if args.fold == "none":
        return None
    if args.records == "steps":
        return "on_steps"
    from evostream.stream_processors.risk.tracker import RiskTracker

    return "on_block" if hasattr(RiskTracker, "on_block") else "on_steps(rows)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--records", choices=("steps", "blocks"), default="steps", help="what the topic holds")
    ap.add_argument("--expect-records", type=int, required=True, help="records on the topic")
    ap.add_argument("--expect-steps", type=int, required=True, help="steps they hold")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument(
        "--fold",
        choices=("risk", "none"),
        default="risk",
        help="none: decode and key_by as usual, but no state and no fold (the job's own floor)",
    )
    ap.add_argument("--connector-jar", default=str(JARS / CONNECTOR))
    args = ap.parse_args()
    try:
        import pyflink  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"run the peer with the PyFlink environment's python (`{SETUP}` sets it up and prints it)"
        ) from e
    if not Path(args.connector_jar).exists():
        raise SystemExit(f"no Kafka connector jar at {args.connector_jar}: `{SETUP}` fetches it")
    from pyflink.java_gateway import get_gateway

    # Thread mode embeds the interpreter (pemja) in the JVM: it starts from the base Python's prefix, not this
    # environment's, so this environment's packages (and the checkout) reach it only through PYTHONPATH.
    paths = [*site.getsitepackages(), *os.environ.get("PYTHONPATH", str(ROOT)).split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    started = time.time()
    get_gateway()  # the JVM: started now, so the sampler counts it from its first moment
    sampler = CpuMeter(lambda: process_tree(os.getpid()), period_s=0.05)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="evostream-flink-peer-") as tmp:
        _job(args, Path(tmp))
        sampler.halt.set()
        sampler.join()
        folds = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("fold-*.json"))]
        counts = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("count-*.json"))]
    firsts = [f["first"] for f in folds if f["first"] is not None]
    lasts = [f["last"] for f in folds if f["last"] is not None]
    records, steps = sum(f["records"] for f in folds), sum(f["steps"] for f in folds)
    seconds = max(lasts) - min(firsts) if firsts else 0.0
    cpu = cpu_between(sampler, min(firsts), max(lasts)) if firsts else 0.0
    result = {
        "peer": "pyflink",
        "mode": "thread",
        "records_kind": args.records,
        "parallelism": args.parallelism,
        "fold": args.fold,
        "fold_api": _fold_api(args),
        "records": records,
        "steps": steps,
        "duplicates": sum(f["duplicates"] for f in folds),
        "rejected": sum(f["rejected"] for f in folds),
        "reports": sum(c["reports"] for c in counts),
        "alerts": sum(c["alerts"] for c in counts),
        "seconds": round(seconds, 4),
        "steps_per_s": round(steps / seconds, 1) if seconds else None,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_step": round(cpu / steps * 1e6, 2) if steps else None,
        "total_cpu_s": round(sampler.samples[-1][1], 3),
        "wall_s": round(time.time() - started, 2),
    }
    print(json.dumps(result), flush=True)
    if records != args.expect_records or steps != args.expect_steps:
        print(
            f"the peer folded {records} records / {steps} steps, expected {args.expect_records} / {args.expect_steps}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
