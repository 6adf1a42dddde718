"""The typed records match the contract, and mypy uses them: a misspelled field is a type error."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from evostream.schemas import default_index, records
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import completion
from evostream.schemas.typegen import main as typegen

ROOT = Path(__file__).resolve().parents[2]
TYPING = ROOT / "tests" / "typing"


def test_records_py_is_what_the_schemas_generate() -> None:
    assert typegen(["--check"]) == 0, "run python -m evostream.schemas.typegen"


@pytest.mark.parametrize("name", default_index().names())
def test_each_record_has_the_newest_schemas_fields(name: str) -> None:
    newest = default_index().latest(name)
    typed = getattr(records, newest.short_name)
    assert list(typing.get_type_hints(typed)) == [f["name"] for f in newest.parsed["fields"]]
    assert typed.__required_keys__ == frozenset(f["name"] for f in newest.parsed["fields"])


def test_a_typed_codec_decodes_what_the_plain_one_does() -> None:
    value = completion(1)
    data = RecordCodec("Completion").encode(value)
    typed: records.Completion = RecordCodec.of(records.Completion).decode(data)
    assert typed == RecordCodec("Completion").decode(data)
    assert typed["timings"]["decode_us"] == value["timings"]["decode_us"]


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_rejects_a_misspelled_field() -> None:
    done = _mypy(TYPING / "misspelled_field.py")
    assert done.returncode == 1, done.stdout
    assert 'TypedDict "Completion" has no key "decode_us"' in done.stdout, done.stdout


def test_mypy_accepts_the_field_spelled_right() -> None:
    done = _mypy(TYPING / "spelled_right.py")
    assert done.returncode == 0, done.stdout
