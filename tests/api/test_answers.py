"""The response models of the registry mirror the projection's typed shapes (``consumers.governance.shapes``): a
field the fold gains is a field the API must show, or the answer would drop it."""

from __future__ import annotations

from typing import get_type_hints

import pytest
from pydantic import BaseModel

from evostream.api import answers
from evostream.consumers.governance import shapes as state


@pytest.mark.parametrize(
    ("model", "shape", "added"),
    [
        (answers.Version, state.VersionState, {"lineage", "model_name"}),
        (answers.Model, state.ModelState, set()),
        (answers.Validation, state.Validation, set()),
        (answers.Proposal, state.Proposal, set()),
        (answers.Approvals, state.Approvals, set()),
        (answers.Rejection, state.Rejection, set()),
        (answers.PendingApproval, state.PendingApproval, set()),
    ],
)
def test_a_registry_answer_has_every_field_of_the_projections_shape(
    model: type[BaseModel], shape: type, added: set[str]
) -> None:
    assert set(model.model_fields) == set(get_type_hints(shape)) | added
