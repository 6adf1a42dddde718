"""The JSON of the OpenAI-compatible endpoints, in OpenAI's wire format: the bodies taken (fields OpenAI's clients send
and evostream does not use are accepted and ignored) and the objects answered (``text_completion``,
``chat.completion``, their stream chunks, the model list). Each answer also carries an ``evostream`` object: the
request and trace ids, whether the cache served it, and its cost."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evostream.api.bodies import MAX_PROMPT_CHARS

MAX_TOKENS = 256
"""The most tokens one answer may have (as ``/infer``'s ``max_new_tokens``)."""
CHAT_MAX_TOKENS = 64
"""A chat request's answer length when it names none (OpenAI's has no bound; the embedded model's answers are short)."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = Field(None, description="A last chunk with the usage (and no choices).")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200, description="Any name: the inference service's model answers.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="0: greedy (cacheable); above 0: sampled. Default 1, as OpenAI's."
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    n: int | None = Field(None, ge=1, le=1, description="One choice per request.")
    stream: bool | None = Field(False, description="Server-sent chunks, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        None, min_length=1, max_length=256, description="The tenant: budgets, rate limits and the cache are its."
    )


class CompletionBody(_Sampling):
    prompt: str | list[str] = Field(description="The prompt (a list of one prompt is accepted too).")
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="Default 16, as OpenAI's.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        prompts = [v] if isinstance(v, str) else v
        if len(prompts) != 1:
            raise ValueError("one prompt per request")
        if not 1 <= len(prompts[0]) <= MAX_PROMPT_CHARS:
            raise ValueError(f"a prompt has 1 to {MAX_PROMPT_CHARS} characters")
        return v

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description=f"Default {CHAT_MAX_TOKENS}.")
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="max_tokens' newer name.")


# --- answers ----------------------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class EvostreamInfo(BaseModel):
    """What evostream adds to OpenAI's objects."""

    request_id: str
    trace_id: str | None = Field(description="The answering generation (null in chunks before it is known).")
    cached: bool = Field(description="Served by the response cache.")
    cached_from: str | None = Field(description="The trace a cached answer repeats.")
    cost_usd: float = Field(description="The answer's cost at the price table (0 when cached).")
    tenant: str


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str = Field(description="The version that answered.")
    choices: list[TextChoice]
    usage: Usage | None
    system_fingerprint: str | None = None
    evostream: EvostreamInfo


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The version that answered.")
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    evostream: EvostreamInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
