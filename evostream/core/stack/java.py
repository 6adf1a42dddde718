"""Find a Java runtime new enough for the broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from evostream.core.errors import JavaNotFoundError

MIN_JAVA = 17


def find_java() -> Path:
    """$JAVA_HOME/bin/java, else java on PATH; checks it is Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is None or not candidate.exists():
        found = shutil.which("java")
        if found is None:
            raise JavaNotFoundError(
                f"no java on PATH; the Kafka broker needs Java {MIN_JAVA}+ (apt-get install openjdk-17-jre-headless)"
            )
        candidate = Path(found)
    try:
        out = subprocess.run([str(candidate), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JavaNotFoundError(f"{candidate} -version failed: {e}") from e
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if m is None:
        raise JavaNotFoundError(f"cannot read the version of {candidate}: {out.stderr.strip()[:200]}")
    major = int(m[1]) if m[1] != "1" else int(m[2] or 0)
    if major < MIN_JAVA:
        raise JavaNotFoundError(f"{candidate} is Java {major}; the Kafka broker needs Java {MIN_JAVA}+")
    return candidate
