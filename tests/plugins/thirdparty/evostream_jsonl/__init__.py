"""A JSON-lines sink: one line per record (its key, topic, schema and value), appended to ``<data_dir>/records.jsonl``
or the option ``path``; records longer than the option ``max_line_bytes`` are refused as poison."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from evostream.plugins.api import Record, Result, Sink, SinkConfigError, SinkContext


class JsonlSink(Sink):
    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        self.path = Path(ctx.option("path") or ctx.data_dir / "records.jsonl")
        self.max_line_bytes = int(ctx.number("max_line_bytes", 1 << 20))
        if self.max_line_bytes < 1:
            raise SinkConfigError(f"sink {self.name!r}: max_line_bytes must be positive, got {self.max_line_bytes}")
        self.seen: set[str] = set()
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as f:
                self.seen = {json.loads(line)["key"] for line in f if line.endswith("\n")}

    def write(self, records: Sequence[Record]) -> Result:
        lines, poison = [], []
        for rec in records:
            if rec.key in self.seen:
                continue
            line = (
                json.dumps({"key": rec.key, "topic": rec.topic, "schema": rec.schema, "value": rec.value}, default=repr)
                + "\n"
            )
            if len(line.encode()) > self.max_line_bytes:
                poison.append(rec)
            else:
                lines.append((rec.key, line))
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.writelines(line for _, line in lines)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            return Result.retry(f"{self.path}: {e}")
        self.seen.update(key for key, _ in lines)
        if poison:
            return Result.failed(f"longer than max_line_bytes={self.max_line_bytes}", poison)
        return Result.ok()
