"""Stopping the processes a benchmark started."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def stop(proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """SIGTERM, up to 60 s to stop, then SIGKILL, said on stderr with where its log is."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        print(f"{what} did not stop within 60 s of SIGTERM: killed (log: {log})", file=sys.stderr)
        proc.kill()
        proc.wait(10)
