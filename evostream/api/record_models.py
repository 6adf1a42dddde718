"""The contract's records as the API answers with them: pydantic models derived, at import, from the newest version of
each ``.avsc`` schema (its fields, types and docs), so the OpenAPI document follows the contract without a copy.

Two changes from the records as published, both ``views.recent.plain``'s: bytes fields (packed statistics, for
machines) are left out, and a non-finite number is null, so every float is nullable."""

from __future__ import annotations

from collections.abc import Mapping
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, create_model

from evostream.schemas.fingerprints import default_index

_SCALARS: dict[str, Any] = {
    "null": None,
    "boolean": bool,
    "int": int,
    "long": int,
    "string": str,
    "float": float | None,
    "double": float | None,
}
Added = Mapping[str, Mapping[str, Any]]
"""Per record name, fields the API adds: ``{name: (type, Field(...))}``."""


class _Deriver:
    """Walks one schema; a named type met again by name is the one made the first time."""

    def __init__(self, named: Mapping[str, Any], added: Added) -> None:
        self.named = named
        self.added = added
        self.made: dict[str, type[BaseModel]] = {}

    def type_of(self, schema: Any) -> Any:
        """The Python type of an Avro type; None for bytes (left out)."""
        if isinstance(schema, str):
            if schema in _SCALARS:
                return _SCALARS[schema]
            if schema == "bytes":
                return None
            return self.type_of(self.named[schema])
        if isinstance(schema, list):  # a union: null where Avro says null
            branches = [self.type_of(b) for b in schema if b != "null"]
            if None in branches:
                return None
            out = branches[0]
            for b in branches[1:]:
                out = out | b
            return out | None if "null" in schema else out
        kind = schema["type"]
        if kind == "record":
            return self.record(schema)
        if kind == "enum":
            literal: Any = Literal
            return literal[tuple(schema["symbols"])]
        if kind == "array":
            item = self.type_of(schema["items"])
            return None if item is None else GenericAlias(list, (item,))
        if kind == "fixed":  # bytes by another name: left out, as bytes are
            return None
        if kind == "map":
            value = self.type_of(schema["values"])
            return None if value is None else GenericAlias(dict, (str, value))
        return self.type_of(kind)

    def record(self, schema: Mapping[str, Any], drop: tuple[str, ...] = ()) -> type[BaseModel]:
        name = str(schema["name"]).rsplit(".", 1)[-1]
        if name in self.made:
            return self.made[name]
        fields: dict[str, Any] = {}
        for f in schema["fields"]:
            kind = self.type_of(f["type"])
            if kind is not None and f["name"] not in drop:
                fields[f["name"]] = (kind, Field(description=f.get("doc")))
        fields.update(self.added.get(name, {}))
        model: type[BaseModel] = create_model(name, __doc__=schema.get("doc"), **fields)
        self.made[name] = model
        return model


def record_model(name: str, drop: tuple[str, ...] = (), added: Added | None = None) -> type[BaseModel]:
    """The model of record ``name`` as the API answers with it: ``drop`` left out, ``added`` put in."""
    parsed = default_index().latest(name).parsed
    return _Deriver(parsed.get("__named_schemas", {}), added or {}).record(parsed, drop)


_TOKEN_PATH_TEXT = {
    "TokenPath": {
        "text": (str, Field(description="The n-gram as text: its pieces joined by a middle dot, quoted.")),
        "pieces": (list[str], Field(description="Each token decoded alone, or #id where its tokenizer is not here.")),
    }
}

if TYPE_CHECKING:  # to mypy, models; their fields are the contract's, read at import
    GenerationStep = BaseModel
    Completion = BaseModel
    RiskReport = BaseModel
    RiskAlert = BaseModel
    DriftReport = BaseModel
    ProfileSnapshot = BaseModel
    RouteDecision = BaseModel
else:
    GenerationStep = record_model("GenerationStep")
    Completion = record_model("Completion", drop=("prompt_embedding",))
    RiskReport = record_model("RiskReport")
    RiskAlert = record_model("RiskAlert")
    DriftReport = record_model("DriftReport")
    ProfileSnapshot = record_model("ProfileSnapshot", added=_TOKEN_PATH_TEXT)
    RouteDecision = record_model("RouteDecision")
