"""The broker a benchmark talks to: --bootstrap, else the running local stack, else a private one it stops after."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evostream.core.settings import load_settings
from evostream.core.stack import LocalStack


@contextmanager
def bench_broker(bootstrap: str | None, heap: str = "2g") -> Iterator[str]:
    settings = load_settings(bootstrap_servers=bootstrap)
    if settings.bootstrap_servers:
        yield settings.bootstrap_servers
        return
    state = LocalStack(settings).read_state()
    if state is not None:
        yield state.bootstrap
        return
    tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-"))
    stack = LocalStack(load_settings(stack_dir=tmp, broker_port=0, controller_port=0, broker_heap=heap))
    try:
        bootstrap = stack.up(lambda m: print(m, file=sys.stderr)).bootstrap
        # the processes a benchmark starts (workers, consumers) log in with the private broker's credentials
        os.environ["EVOSTREAM_KAFKA_CREDENTIALS"] = str(stack.credentials_file)
        yield bootstrap
    finally:
        stack.down()
        stack.wipe()
