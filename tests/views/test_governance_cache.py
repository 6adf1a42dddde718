"""The governance log as the API reads it: records read once and kept while the log's end does not move, only the
new ones read (and replayed) when it does, the answers the same as a fresh replay's."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import init
from evostream.core.settings import load_settings
from evostream.views.governance import GovernanceView, registry_doc

pytestmark = pytest.mark.integration


def test_reads_of_an_unchanged_log_ask_only_for_its_end_and_a_new_event_is_read_alone(
    kafka: str, tmp_path: Path
) -> None:
    settings = load_settings(
        bootstrap_servers=kafka, governance_dir=tmp_path, governance_topic=f"test-gov-cache-{uuid.uuid4().hex[:8]}"
    )
    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    admin, _ = init(glog, tmp_path / "keys", "admin")
    view = GovernanceView(kafka, settings, cached=True)
    try:
        first = view.replayed()
        for _ in range(20):
            again = view.replayed()
            rows, findings = view.audit()
        assert view.cache is not None and view.cache.reads == 1, "an unchanged log was read again"
        assert again.registry is first.registry and not findings and len(rows) == len(first.events)

        bob = ActorKey.generate()
        admin.enroll("bob", bob.public_hex, bob.key_id, ["approver"], reason="a second reader")
        after = view.replayed()
        assert view.cache.reads == 2
        assert "bob" in after.registry.actors
        fresh = GovernanceView(kafka, settings).replayed()  # a whole replay, as a command makes it
        assert registry_doc(after.registry) == registry_doc(fresh.registry)
        assert after.findings == fresh.findings == []
        past = view.replayed(str(first.registry.offset))  # as of an offset: from the kept records
        assert "bob" not in past.registry.actors and view.cache.reads == 2
    finally:
        if view.cache is not None:
            view.cache.close()
        glog.close()
