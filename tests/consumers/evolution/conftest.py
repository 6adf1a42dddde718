"""Shared fixtures of the evolution tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): with more than one
    thread, handing each small matmul between threads costs more than the matmul (10x slower on a busy 2-core
    machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
