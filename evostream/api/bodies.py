"""The JSON the API takes: one pydantic model per request body, its limits in the model (a body over them is 422
with the field named, before any endpoint runs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

MAX_PROMPT_CHARS = 4000


class InferBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The prompt.")
    max_new_tokens: int = Field(32, ge=1, le=256)
    timeout_s: float = Field(30.0, gt=0, le=300, description="How long to wait for the answer.")
    risk_wait_s: float = Field(2.0, ge=0, le=30, description="How long to wait, after the answer, for its risk.")
    user: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The tenant the request counts for (budgets, rate limits, the response cache); default 'http'.",
    )
    template: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}(@[a-z0-9_@-]+)?$",
        description="A governed prompt template, 'name' (its production version) or 'name@version': the inference "
        "service renders the prompt into its {input} slot; the answer says which version (template_version).",
    )


class RollbackBody(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    to: str = Field("previous", min_length=1, max_length=200, description="A version, or 'previous'.")
    reason: str = Field(min_length=1, max_length=2000)


class ApproveBody(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=200)
    stage: Literal["staging", "production"] = "production"
    reason: str = Field("", max_length=2000)


class EvolveBody(BaseModel):
    model: str | None = Field(None, max_length=200, description="Registry model name (default: the embedded model's).")
    recipes: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Candidates to build, e.g. 'drop=1,heads=0.5' (default: a search of four).",
    )
    steps: int = Field(1500, ge=0, le=20000, description="Distillation steps per candidate.")
    held_out: int = Field(50, ge=1, le=500, description="Held-out suite prompts per task the sandbox measures.")
    reps: int = Field(5, ge=1, le=20, description="Side-by-side speed repetitions.")
    propose: bool = Field(True, description="Register and propose the chosen candidate to governance.")


class FeedbackBody(BaseModel):
    trace_id: str = Field(min_length=1, max_length=200)
    label: Literal["RIGHT", "WRONG", "GRADED"]
    score: float | None = Field(None, ge=0.0, le=1.0, description="How right: needed for GRADED, 1 / 0 or none else.")
    note: str = Field("", max_length=2000)

    @model_validator(mode="after")
    def _score_fits_label(self) -> FeedbackBody:
        fixed = {"RIGHT": 1.0, "WRONG": 0.0}.get(self.label)
        if fixed is None and self.score is None:
            raise ValueError("a GRADED label needs a score in [0, 1]")
        if fixed is not None and self.score not in (None, fixed):
            raise ValueError(f"a {self.label} label has score {fixed:g}")
        return self
