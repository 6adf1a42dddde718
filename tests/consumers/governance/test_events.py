"""The event record as read: a payload must be canonical JSON, so the hash covers the one reading every reader has."""

from __future__ import annotations

import pytest

from evostream.consumers.governance.events import GovEvent
from evostream.core.errors import GovernanceError


def record(payload_json: str) -> dict[str, object]:
    ev = GovEvent(type="ActorRevoked", actor="root", key_id="k", payload={"actor_id": "bob"}).linked(0, "", 1)
    return {**ev.to_record(), "payload_json": payload_json}


def test_a_canonical_payload_reads_back_whole() -> None:
    ev = GovEvent.from_record(record('{"actor_id":"bob"}'))
    assert ev.payload == {"actor_id": "bob"}


@pytest.mark.parametrize(
    ("payload_json", "why"),
    [
        ('{"actor_id":"eve","actor_id":"bob"}', "not canonical"),  # duplicate keys: parsers disagree on which wins
        ('{"actor_id": "bob"}', "not canonical"),  # other spacing
        ('{"actor_id":"\\ud800"}', "plain JSON"),  # a lone surrogate has no UTF-8 form: it cannot be hashed
        ("[1]", "not a JSON object"),
        ("{", "not JSON"),
    ],
)
def test_a_payload_that_is_not_canonical_json_is_refused(payload_json: str, why: str) -> None:
    with pytest.raises(GovernanceError, match=why):
        GovEvent.from_record(record(payload_json))
