"""Reading W&B offline runs back, for the tests: a ``.wandb`` file is a LevelDB-log-framed sequence of
``wandb_internal_pb2.Record`` messages (header ``:W&B`` 0xBEE1 v0, 32 KiB blocks, each chunk checked by CRC-32 of
its type byte and payload). Tables are JSON files the run's summary points to."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32 * 1024, 7


def records(path: Path) -> Iterator[Any]:
    data = path.read_bytes()
    if struct.unpack("<4sHB", data[:7]) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, chunks = 7, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the rest of a block too small for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            break
        if zlib.crc32(bytes([kind]) + payload) != crc:
            raise ValueError(f"{path}: bad CRC at byte {pos}")
        chunks += payload
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()  # type: ignore[attr-defined]  # generated module: its stub lacks the messages
            rec.ParseFromString(chunks)
            chunks = b""
            yield rec


def _key(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))


@dataclass
class Run:
    dir: Path
    id: str = ""
    name: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exited: bool = False

    def table(self, key: str) -> dict[str, Any]:
        """The last logged table under ``key``: {"columns": [...], "data": [[...], ...]}."""
        return dict(json.loads((self.dir / "files" / self.summary[f"{key}/path"]).read_text()))


def read_run(run_dir: Path) -> Run:
    run = Run(run_dir)
    (log,) = run_dir.glob("run-*.wandb")
    for rec in records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "run":
            run.id, run.name, run.project = rec.run.run_id, rec.run.display_name, rec.run.project
            run.config.update({_key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "exit":
            run.exited = True
    return run


def read_runs(root: Path) -> list[Run]:
    """Every offline run under ``root`` (a ``wandb`` folder's parent), oldest first."""
    return [read_run(d) for d in sorted((root / "wandb").glob("offline-run-*"))]
