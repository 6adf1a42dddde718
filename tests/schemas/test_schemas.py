"""The schema files themselves: documented, loadable, compatible across versions, consistent with the catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evostream.core.errors import SchemaError
from evostream.schemas import CATALOG, SchemaIndex, default_index, topic_spec
from evostream.schemas.catalog import GOVERNANCE
from evostream.schemas.compat import check_backward_transitive
from evostream.schemas.fingerprints import AVRO_DIR
from tests.conftest import DATA


def _undocumented(node: Any, path: str) -> list[str]:
    missing = []
    if isinstance(node, dict):
        if node.get("type") == "record":
            if not node.get("doc") and path.count(".") == 0:
                missing.append(path)
            for f in node["fields"]:
                if not f.get("doc"):
                    missing.append(f"{path}.{f['name']}")
                missing += _undocumented(f["type"], f"{path}.{f['name']}")
        elif node.get("type") == "array":
            missing += _undocumented(node["items"], path)
    elif isinstance(node, list):
        for branch in node:
            missing += _undocumented(branch, path)
    return missing


@pytest.mark.parametrize("path", sorted(AVRO_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_field_is_documented(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert _undocumented(raw, raw["name"]) == []


def test_every_design_event_has_a_schema() -> None:
    names = {sv.short_name for sv in default_index()}
    assert names == {
        "InferenceRequest",
        "GenerationStep",
        "StepBlock",
        "Completion",
        "ProfileSnapshot",
        "DriftReport",
        "RiskReport",
        "RiskAlert",
        "GovernanceEvent",
        "GovernanceSnapshot",
        "DeadLetter",
        "NeuronCounts",
        "ProfileDelta",
        "Outcome",
        "RouteDecision",
        "ShadowComparison",
    }  # ProfileDelta: internal to the processors


def test_repository_schemas_are_backward_transitive() -> None:
    assert check_backward_transitive(default_index()) == []


def test_compatible_evolution_passes_the_check() -> None:
    assert check_backward_transitive(SchemaIndex.from_directory(DATA / "evolving")) == []


def test_field_without_default_is_caught() -> None:
    problems = check_backward_transitive(SchemaIndex.from_directory(DATA / "incompatible"))
    assert problems, "a v3 that adds a field without default must be refused"
    assert all("v3 cannot read" in p for p in problems)
    assert any("v1" in p for p in problems) and any("v2" in p for p in problems)


def test_schema_index_refuses_gaps_and_bad_names(tmp_path: Path) -> None:
    src = (DATA / "evolving" / "Reading.v1.avsc").read_text()
    (tmp_path / "Reading.v1.avsc").write_text(src)
    (tmp_path / "Reading.v3.avsc").write_text((DATA / "evolving" / "Reading.v2.avsc").read_text())
    with pytest.raises(SchemaError, match="without gaps"):
        SchemaIndex.from_directory(tmp_path)
    (tmp_path / "Reading.v3.avsc").unlink()
    (tmp_path / "reading-v2.avsc").write_text(src)
    with pytest.raises(SchemaError, match=r"<Record>\.v<N>\.avsc"):
        SchemaIndex.from_directory(tmp_path)


def test_schema_index_refuses_broken_schema(tmp_path: Path) -> None:
    (tmp_path / "Broken.v1.avsc").write_text(
        '{"type": "record", "name": "Broken", "fields": [{"name": "x", "type": "nope"}]}'
    )
    with pytest.raises(SchemaError, match=r"Broken\.v1\.avsc: not a valid Avro schema"):
        SchemaIndex.from_directory(tmp_path)


def test_unknown_record_name_lists_known_ones() -> None:
    with pytest.raises(SchemaError, match="GenerationStep"):
        default_index().latest("GenerationSteps")


def test_catalog_matches_the_schemas() -> None:
    reg = default_index()
    for spec in CATALOG:
        fields = {f["name"] for f in reg.latest(spec.value_schema).parsed["fields"]}
        if spec.name != "evo.dlq":  # dead letters keep the original record's key
            assert spec.key in fields, spec.name
        assert spec.partitions >= 1


def test_governance_log_is_kept_forever_and_never_compacted() -> None:
    spec = topic_spec(GOVERNANCE)
    assert spec.config() == {"cleanup.policy": "delete", "retention.ms": "-1"}
