from __future__ import annotations

import pytest

from evostream.routing.policy import RoutingError
from evostream.routing.prices import PriceTable


def test_first_matching_pattern_prices_a_version() -> None:
    table = PriceTable.from_bytes(
        b'{"external:*": {"prompt_per_1k": 0.01, "output_per_1k": 0.03},'
        b' "*": {"prompt_per_1k": 0.0001, "output_per_1k": 0.0002}}'
    )
    assert table.cost("external:gpt", 1000, 2000) == pytest.approx(0.07)
    assert table.cost("evostream/t5@v1", 1000, 1000) == pytest.approx(0.0003)
    assert PriceTable().cost("anything", 10, 10) == 0.0
    assert not PriceTable().priced("anything")


@pytest.mark.parametrize(
    "raw",
    [b"[1]", b"{", b'{"a": {"prompt_per_1k": -1, "output_per_1k": 0}}', b'{"a": {"prompt_per_1k": 1}}'],
)
def test_a_bad_table_is_refused_with_the_reason(raw: bytes) -> None:
    with pytest.raises(RoutingError, match="price"):
        PriceTable.from_bytes(raw)
