"""Hot-swap of the serving model: a follower names the version to serve, the service switches between batches.

The service reads its ``ModelSource`` once per batch, after polling and before generating, and serves the whole
batch with what it read: a batch in flight finishes on the model it started with, and every Completion and step
event it emits names that model's version. A request published after ``ModelSlot.swap`` returned is served by the
new version (its poll comes after the swap).

Loading is the slow part and happens in the caller's thread (the governance follower's), never in the serving
thread: ``swap`` loads and checks the new model, then publishes it in one reference assignment. A version that
fails to load (an ``ArtifactError`` for altered bytes, a ``ModelLoadError``, anything else) is refused with a logged
error, and the old one keeps serving. Which version to serve is the follower's decision, not this module's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from evostream.core.artifacts import ArtifactBackend
from evostream.core.errors import EvoError
from evostream.models.anatomy import anatomy
from evostream.models.loading import LoadedModel, load_model
from evostream.producers.generate import GenerationError
from evostream.producers.steps import AttentionSignal

log = logging.getLogger("evostream.swap")

Loader = Callable[[], LoadedModel]
"""Loads one model version; called off the serving path."""


@dataclass(frozen=True)
class ServingModel:
    """A model and the exact version name that every record it produces carries."""

    version: str
    loaded: LoadedModel


class ModelSource(Protocol):
    """What the inference service serves: read once per batch, between batches, from the serving thread.

    ``current`` must be quick and must not block (no loading there). The service builds its instrumented generator for
    a model when it first serves it and closes it when it stops; a source hands over models, never generators."""

    def current(self) -> ServingModel: ...


class FixedModel:
    """A source that always serves one model (the service's default)."""

    def __init__(self, serving: ServingModel) -> None:
        self._serving = serving

    def current(self) -> ServingModel:
        return self._serving


@dataclass(frozen=True)
class SwapResult:
    """What became of a request to serve ``version``."""

    version: str
    accepted: bool
    error: str | None = None
    """Why it was refused (the old version keeps serving)."""
    load_s: float = 0.0


def check_servable(lm: LoadedModel, signal: AttentionSignal | None = None) -> None:
    """Raise if the service could not instrument ``lm``: its layers cannot be located, or ``signal`` is ENTROPY and
    the model does not compute eager attention (the same rules the generator applies, checked before the swap)."""
    anatomy(lm.model)
    if signal == "ENTROPY" and lm.attn_implementation != "eager":
        raise GenerationError(
            f"{lm.name} was loaded with {lm.attn_implementation} attention, but the service reports "
            "attention ENTROPY, which needs attn_implementation='eager'"
        )


class ModelSlot:
    """A ``ModelSource`` that a follower switches with ``swap`` (thread-safe; one swap at a time)."""

    def __init__(self, initial: ServingModel, validate: Callable[[LoadedModel], None] = check_servable) -> None:
        """``validate`` runs on every newly loaded model before it may serve, and raises to refuse it."""
        self._current = initial
        self._validate = validate
        self._lock = threading.Lock()

    def current(self) -> ServingModel:
        return self._current  # one reference read: the serving thread never waits for a swap in progress

    def swap(self, version: str, load: Loader) -> SwapResult:
        """Load ``version`` with ``load`` in this thread, check it, and make it the one served from the next batch.

        Swapping to the version already served does nothing. A model that fails to load or to validate is refused:
        the error is logged and returned, and the current version keeps serving."""
        with self._lock:
            old = self._current
            if version == old.version:
                return SwapResult(version, accepted=True)
            t0 = time.perf_counter()
            try:
                lm = load()
                self._validate(lm)
            except Exception as e:  # any failure refuses the version; serving must go on
                log.error(
                    "refused model version %s (%s: %s); %s keeps serving",
                    version,
                    type(e).__name__,
                    e,
                    old.version,
                    exc_info=not isinstance(e, EvoError),
                )
                return SwapResult(version, accepted=False, error=f"{type(e).__name__}: {e}")
            load_s = time.perf_counter() - t0
            self._current = ServingModel(version, lm)
            log.info(
                "model version %s loaded in %.1f s; it serves from the next batch (was %s)",
                version,
                load_s,
                old.version,
            )
            return SwapResult(version, accepted=True, load_s=load_s)


def _load_folder(path: Path) -> LoadedModel:
    return load_model(str(path))


def artifact_loader(store: ArtifactBackend, sha256: str, load: Callable[[Path], LoadedModel] = _load_folder) -> Loader:
    """A loader for the model stored as artifact ``sha256``: its bytes are verified against their registered hash
    before ``load`` reads them, so an altered artifact raises ArtifactError and is never loaded."""

    def loader() -> LoadedModel:
        return load(store.open(sha256))

    return loader
