"""Evolution cycles started through the API (``POST /evolve``): one at a time, each on a thread of its own, kept as
an ``EvolveJob`` that ``GET /evolve/{job_id}`` shows as it progresses.

One at a time because a cycle measures speed side by side, and two at once would measure each other. A failed cycle
is its job's answer, never the API's end."""

from __future__ import annotations

import threading
import uuid

from evostream.api.answers import EvolveJob
from evostream.api.auth import Actor, RegistryCache
from evostream.api.bodies import EvolveBody
from evostream.api.config import ApiConfig
from evostream.core.clock import now_us
from evostream.core.errors import ConflictError, NotFoundError

KEPT = 20
"""Jobs remembered (the oldest are forgotten first)."""


class EvolveJobs:
    """The jobs started here, and the runner of each."""

    def __init__(self, cfg: ApiConfig, registry: RegistryCache) -> None:
        self.cfg = cfg
        self.registry = registry
        self.jobs: dict[str, EvolveJob] = {}
        self._lock = threading.Lock()

    def start(self, body: EvolveBody, actor: Actor) -> EvolveJob:
        """Start one cycle on a thread; ConflictError while another runs, NotFoundError for an unknown model."""
        from evostream.consumers.evolution.recipe import Recipe
        from evostream.models.default_model import MODEL_ID

        for r in body.recipes:
            Recipe.parse(r)  # a bad recipe is refused now (400), not accepted and failed later
        model = body.model or MODEL_ID
        if model not in self.registry.get().models:
            raise NotFoundError(f"no model {model!r} in the registry; GET /registry lists them")
        with self._lock:
            for old in list(self.jobs)[: 1 - KEPT]:
                del self.jobs[old]
            running = [j for j in self.jobs.values() if j.state == "running"]
            if running:
                raise ConflictError(
                    f"evolution cycle {running[0].job_id} is still running; GET /evolve/{running[0].job_id}"
                )
            job = EvolveJob(job_id=uuid.uuid4().hex[:12], actor=actor.name, started_us=now_us())
            self.jobs[job.job_id] = job
        threading.Thread(target=self._cycle, args=(job, body), name=f"evolve-{job.job_id}", daemon=True).start()
        return job.model_copy(deep=True)

    def get(self, job_id: str) -> EvolveJob:
        """A copy of the job as it is now; NotFoundError naming the jobs kept."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise NotFoundError(
                    f"no evolution job {job_id!r} on this API (jobs: {', '.join(list(self.jobs)) or 'none'})"
                )
            return job.model_copy(deep=True)

    def _cycle(self, job: EvolveJob, body: EvolveBody) -> None:
        from evostream.models.default_model import MODEL_ID
        from evostream.wiring.evolution import consumer, cycle_config, cycle_line

        def say(line: str) -> None:
            with self._lock:
                job.lines.append(line)

        try:
            cfg = cycle_config(body.recipes or None, body.steps, body.held_out, body.reps)
            evo = consumer(self.cfg.settings, self.cfg.bootstrap, body.model or MODEL_ID, cfg, say)
            out = evo.cycle(f"api:{job.actor}:{job.job_id}", propose_it=body.propose)
            candidates = [cycle_line(c) for c in (out.result.candidates if out.result else [])]
            with self._lock:
                job.candidates, job.version, job.passed = candidates, out.version, out.passed
                job.state = "done"
        except Exception as e:  # a failed cycle is the job's answer, never the API's end
            with self._lock:
                job.error, job.state = f"{type(e).__name__}: {e}", "failed"
        finally:
            with self._lock:
                job.ended_us = now_us()
            self.registry.invalidate()
