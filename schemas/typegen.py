"""Typed records from the contract: one ``TypedDict`` per record (its newest schema version) and one ``Literal`` per
enum, rendered from the ``.avsc`` files into ``schemas/records.py``, so mypy catches a misspelled field.

The schemas are the source; the module is derived and checked in. ``python -m evostream.schemas.typegen`` rewrites
it, ``--check`` fails when it is stale (tests/schemas/test_records.py runs the check)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from evostream.schemas.fingerprints import SchemaIndex, default_index

OUT = Path(__file__).with_name("records.py")
_WIDTH = 120  # ruff's line length (pyproject.toml)
_PRIMITIVES = {
    "null": "None",
    "boolean": "bool",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "bytes": "bytes",
    "string": "str",
}
_HEADER = '''"""Typed records of the Avro contract: one TypedDict per record (its newest version), one Literal per enum.

Generated from schemas/avro/*.avsc by ``python -m evostream.schemas.typegen``: do not edit by hand."""

from __future__ import annotations

from typing import Literal, TypeAlias, TypedDict
'''


class _Renderer:
    """Walks schemas depth first, so a named type is defined before the record that uses it."""

    def __init__(self) -> None:
        self.blocks: dict[str, str] = {}  # short name -> its definition, in definition order

    def type_of(self, schema: Any) -> str:
        if isinstance(schema, str):
            return _PRIMITIVES.get(schema) or _short(schema)  # a primitive, or a named type defined earlier
        if isinstance(schema, list):  # a union, null last as Python spells it
            types = [self.type_of(branch) for branch in schema]
            return " | ".join(sorted(types, key=lambda x: x == "None"))
        kind = schema["type"]
        if kind == "record":
            return self.record(schema)
        if kind == "enum":
            return self.enum(schema)
        if kind == "array":
            return f"list[{self.type_of(schema['items'])}]"
        if kind == "map":
            return f"dict[str, {self.type_of(schema['values'])}]"
        if kind == "fixed":
            return "bytes"
        return self.type_of(kind)  # {"type": "string"} and the like

    def enum(self, schema: dict[str, Any]) -> str:
        name = _short(schema["name"])
        if name not in self.blocks:
            symbols = ", ".join(json.dumps(s) for s in schema["symbols"])
            self.blocks[name] = f"{name}: TypeAlias = Literal[{symbols}]\n"
        return name

    def record(self, schema: dict[str, Any]) -> str:
        name = _short(schema["name"])
        if name in self.blocks:
            return name
        fields = [(f["name"], self.type_of(f["type"]), f.get("doc", "")) for f in schema["fields"]]
        lines = [f"class {name}(TypedDict):", _docstring(schema.get("doc", name)), ""]
        for field, type_, field_doc in fields:
            lines.append(f"    {field}: {type_}")
            if field_doc:
                lines.append(_docstring(field_doc))
        self.blocks[name] = "\n".join(lines) + "\n"
        return name


def _short(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def _docstring(text: str) -> str:
    """A docstring for ``text`` inside a class body, wrapped to the line length (quotes and backslashes escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    lines = textwrap.wrap('"""' + escaped + '"""', width=_WIDTH, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def render(index: SchemaIndex) -> str:
    """The module text for the newest version of every record in ``index``."""
    r = _Renderer()
    for name in index.names():
        r.record(index.latest(name).parsed)
    blocks = list(r.blocks.values())
    # what ruff's formatter and import sorter keep: one blank line after the imports before an alias, two elsewhere
    first = "\n" if not blocks[0].startswith("class ") else "\n\n"
    return _HEADER + first + "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if records.py differs from the schemas")
    args = parser.parse_args(argv)
    text = render(default_index())
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python -m evostream.schemas.typegen", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
