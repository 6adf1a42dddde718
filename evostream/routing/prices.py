"""What an answer costs: a price table of US dollars per thousand prompt and output tokens, by model version.

The table comes from configuration (``Settings.route_prices``: a JSON file ``{"<version or glob>": {"prompt_per_1k":
0.0005, "output_per_1k": 0.0015}}``); the first pattern that matches a version, in the file's order, prices it, and an
unpriced version costs 0 (said by ``priced``)."""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evostream.routing.policy import RoutingError


@dataclass(frozen=True)
class Price:
    """US dollars per thousand tokens."""

    prompt_per_1k: float
    output_per_1k: float

    def cost(self, prompt_tokens: int, output_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_1k + output_tokens * self.output_per_1k) / 1000.0


FREE = Price(0.0, 0.0)


@dataclass(frozen=True)
class PriceTable:
    """Prices by version pattern (``fnmatch`` globs such as ``external:*``), the first match wins."""

    entries: tuple[tuple[str, Price], ...] = ()

    def price(self, model_version: str) -> Price:
        for pattern, price in self.entries:
            if fnmatch.fnmatchcase(model_version, pattern):
                return price
        return FREE

    def priced(self, model_version: str) -> bool:
        return any(fnmatch.fnmatchcase(model_version, p) for p, _ in self.entries)

    def cost(self, model_version: str, prompt_tokens: int, output_tokens: int) -> float:
        return self.price(model_version).cost(prompt_tokens, output_tokens)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PriceTable:
        entries = []
        for pattern, row in data.items():
            try:
                price = Price(float(row["prompt_per_1k"]), float(row["output_per_1k"]))
            except (KeyError, TypeError, ValueError) as e:
                raise RoutingError(
                    f"price of {pattern!r}: expected {{'prompt_per_1k': number, 'output_per_1k': number}}, got {row!r}"
                ) from e
            if not all(math.isfinite(v) and v >= 0 for v in (price.prompt_per_1k, price.output_per_1k)):
                raise RoutingError(f"price of {pattern!r}: prices are finite and not negative, got {row!r}")
            entries.append((str(pattern), price))
        return cls(tuple(entries))

    @classmethod
    def from_bytes(cls, data: bytes) -> PriceTable:
        try:
            parsed = json.loads(data)
        except ValueError as e:
            raise RoutingError(f"the price table is not JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise RoutingError("the price table is a JSON object of version pattern -> prices")
        return cls.from_json(parsed)
