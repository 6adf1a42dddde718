"""Resolve Apache Kafka's jars from Maven Central into a cache folder, once."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from evostream.core.errors import MavenError
from evostream.core.settings import Settings

_LOG4J2_DEPS = "\n".join(
    f"    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>{a}</artifactId>"
    "<version>{log4j}</version></dependency>"
    for a in ("log4j-slf4j-impl", "log4j-core", "log4j-api")
)
# Kafka 3.x dies at start without a reload4j binding.
_RELOAD4J_DEPS = (
    "    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>"
    "<version>1.7.36</version></dependency>\n"
    "    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>"
    "<version>1.2.25</version></dependency>"
)
_COMPLETE = ".complete"
_OFFLINE_HINTS = (
    "offline",
    "Could not transfer",
    "Unknown host",
    "Connection refused",
    "Network is unreachable",
)


def uses_log4j2(kafka_version: str) -> bool:
    """Kafka 4.x logs through log4j2; 3.x through reload4j."""
    return int(kafka_version.split(".", 1)[0]) >= 4


def render_pom(kafka_version: str, log4j_version: str) -> str:
    template = resources.files("evostream.core.stack").joinpath("resources/pom.xml").read_text(encoding="utf-8")
    deps = _LOG4J2_DEPS.replace("{log4j}", log4j_version) if uses_log4j2(kafka_version) else _RELOAD4J_DEPS
    return template.replace("@KAFKA_VERSION@", kafka_version).replace("@LOGGING_DEPENDENCIES@", deps)


def kafka_lib_dir(cache_dir: Path, kafka_version: str) -> Path:
    return cache_dir / f"kafka-{kafka_version}" / "lib"


def resolve_kafka_libs(
    cache_dir: Path,
    kafka_version: str,
    log4j_version: str,
    *,
    offline: bool = False,
    maven_repo_local: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Path:
    """Return the folder holding the broker's runtime jars, resolving them with Maven the first time."""
    lib = kafka_lib_dir(cache_dir, kafka_version)
    if (lib / _COMPLETE).exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenError(
            "Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars (apt-get install maven)"
        )
    work = lib.parent
    work.mkdir(parents=True, exist_ok=True)
    pom = work / "pom.xml"
    pom.write_text(render_pom(kafka_version, log4j_version), encoding="utf-8")
    staging = work / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [mvn, "-B", "-q", "-f", str(pom), "package", f"-Dlib.dir={staging}"]
    if offline:
        cmd.insert(1, "-o")
    if maven_repo_local is not None:
        cmd.append(f"-Dmaven.repo.local={maven_repo_local}")
    progress(f"resolving Apache Kafka {kafka_version} from Maven Central into {lib} (first time only)")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as e:
        raise MavenError(f"Maven did not finish resolving Kafka {kafka_version} within 15 minutes") from e
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        said = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        why = (
            "Maven Central is not reachable and nothing is cached"
            if offline or any(h in said for h in _OFFLINE_HINTS)
            else "Maven failed"
        )
        raise MavenError(
            f"could not resolve Apache Kafka {kafka_version} jars: {why}.\n"
            f"Command: {' '.join(cmd)}\nMaven said:\n{said}"
        )
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    (lib / _COMPLETE).write_text(kafka_version, encoding="utf-8")
    return lib


def kafka_libs_of(s: Settings, progress: Callable[[str], None]) -> Path:
    """The Kafka jars the settings name (version, cache, Maven), resolved as ``resolve_kafka_libs`` does."""
    return resolve_kafka_libs(
        s.cache_dir,
        s.kafka_version,
        s.log4j_version,
        offline=s.maven_offline,
        maven_repo_local=s.maven_repo_local,
        progress=progress,
    )
