"""Token ids as text, with the tokenizer of the model version that generated them.

The processors aggregate token ids (a ProfileSnapshot's token paths); people read text. A version's tokenizer is
found locally, never downloaded: the embedded default model's own folder (its version is computed from the shipped
weights), else the folder of that version's artifact in this machine's artifact store, as the governance registry
names it. Where neither is here, ids stay ids (``#50``)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from evostream.core.errors import EvoError

Resolve = Callable[[str], Path | None]


class TokenDecoder:
    """Decodes ids per model version; each version's tokenizer is loaded once, on first use."""

    def __init__(self, resolve: Resolve) -> None:
        self._resolve = resolve
        self._tokenizers: dict[str, Any] = {}

    def tokenizer(self, version: str) -> Any | None:
        """The version's tokenizer; one not found is looked for again next time (a version registered since, in a
        long-running API, is then found), one found is kept."""
        if version not in self._tokenizers:
            path = self._resolve(version)
            tok = None if path is None else _load(path)
            if tok is None:
                return None
            self._tokenizers[version] = tok
        return self._tokenizers[version]

    def pieces(self, version: str, ids: Sequence[int]) -> list[str]:
        """Each id decoded alone (as a step's ``token_text`` is), or ``#id`` where the tokenizer is not here."""
        tok = self.tokenizer(version)
        if tok is None:
            return [f"#{i}" for i in ids]
        return [tok.decode([i]) for i in ids]

    def path_text(self, version: str, ids: Sequence[int]) -> str:
        """An n-gram for people: its tokens' texts joined by a middle dot, quoted (spaces show)."""
        return '"' + "·".join(self.pieces(version, ids)) + '"'


def _load(path: Path) -> Any | None:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError):  # a folder without a tokenizer: ids stay ids
        return None


@cache
def default_version() -> str | None:
    """The embedded default model's registry version (``name@<digest of its weights>``), None if it is not built."""
    from evostream.models.default_model import MODEL_ID, WEIGHTS_DIR
    from evostream.models.loading import weights_digest

    digest = weights_digest(WEIGHTS_DIR) if WEIGHTS_DIR.exists() else None
    return f"{MODEL_ID}@{digest}" if digest else None


def local_resolver(artifacts_dir: Path, registry: Callable[[], Any] | None = None, refresh_s: float = 30.0) -> Resolve:
    """The default model's folder for its version; else, given ``registry`` (it replays the governance log: called on
    the first version that is not the default, and again at most every ``refresh_s`` for a version it did not name),
    the local artifact of the version it names."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.models.default_model import WEIGHTS_DIR

    store = ArtifactStore(artifacts_dir)
    replayed: dict[str, Any] = {"registry": None, "at": -math.inf}

    def current(version: str) -> Any:
        known = replayed["registry"] is not None and any(
            version in m["versions"] for m in replayed["registry"].models.values()
        )
        if registry is not None and not known and time.monotonic() - replayed["at"] >= refresh_s:
            replayed["at"] = time.monotonic()
            with contextlib.suppress(EvoError):  # no broker, no log: ids stay ids, for now
                replayed["registry"] = registry()
        return replayed["registry"]

    def resolve(version: str) -> Path | None:
        if version == default_version():
            return WEIGHTS_DIR
        reg = current(version)
        if reg is None:
            return None
        for model in reg.models.values():
            info = model["versions"].get(version)
            if info is not None and store.contains(info["artifact_sha256"]):
                return store.open(info["artifact_sha256"])
        return None

    return resolve
