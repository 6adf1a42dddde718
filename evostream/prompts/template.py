"""The template record: a name, a text with exactly one ``{input}`` slot, the protected markers every version of it
must keep, the suite task it serves, the version it derives from; its rendering, and how requests name a version.

A template is governed like a model: each version is an artifact in the store (``to_bytes``, canonical JSON) and a
version of the registry model ``template/<name>``, named ``<name>@<n>`` (the n-th registered). A request names
``<name>`` (the production version) or ``<name>@<n>``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from evostream.core.errors import EvoError

SLOT = "{input}"
"""Where the request's prompt goes: every template text holds it exactly once."""
EXAMPLE_PREFIX = "Example: "
"""A worked example's line (one without the slot): a rendered input and its answer, not the instruction."""
MODEL_PREFIX = "template/"
"""The registry model of template ``x`` is ``template/x``."""
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_FORMAT = "evostream-template/1"


class TemplateError(EvoError):
    """A template that cannot be made, named or rendered: a bad text or name, an unknown template or version."""


@dataclass(frozen=True)
class Template:
    """One version's content. ``markers``: strings every version must contain (a variant without one is never
    accepted); ``task``: the suite task it is scored on (None: not scored); ``parent``: the version it derives from."""

    name: str
    text: str
    markers: tuple[str, ...] = ()
    task: str | None = None
    parent: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "name": self.name,
            "text": self.text,
            "markers": list(self.markers),
            "task": self.task,
            "parent": self.parent,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Template:
        """The template of ``doc``; TemplateError when it is not one (or not a valid one)."""
        try:
            if doc["format"] != _FORMAT:
                raise TemplateError(f"unknown template format {doc['format']!r} (this evostream reads {_FORMAT})")
            markers = doc["markers"]
            if not isinstance(markers, list) or not all(isinstance(m, str) for m in markers):
                raise TemplateError("a template's markers are a list of strings")
            t = cls(str(doc["name"]), str(doc["text"]), tuple(markers), doc["task"], doc["parent"])
        except (KeyError, TypeError) as e:
            raise TemplateError(f"malformed template document: {e!r}") from e
        check(t)
        return t

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces, UTF-8): the bytes the artifact store hashes."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Template:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TemplateError(f"a template artifact is not JSON: {e}") from e
        return cls.from_json(doc)

    def with_text(self, text: str, parent: str | None) -> Template:
        """A variant of this template: the same name, markers and task, another text, derived from ``parent``."""
        return replace(self, text=text, parent=parent)


def problems(t: Template) -> list[str]:
    """Why ``t`` is no valid template (empty: it is one)."""
    out = []
    if not NAME.fullmatch(t.name):
        out.append(
            f"template name {t.name!r} must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter "
            "or digit"
        )
    slots = t.text.count(SLOT)
    if slots != 1:
        out.append(f"the text must hold the slot {SLOT} exactly once, it holds it {slots} times")
    for m in t.markers:
        if not m.strip():
            out.append("a protected marker must not be empty")
        elif SLOT in m:
            out.append(f"the protected marker {m!r} must not contain the slot {SLOT}")
        elif m not in instruction(t.text):
            out.append(f"the protected marker {m!r} is not in the text")
    if len(set(t.markers)) != len(t.markers):
        out.append("a protected marker is listed twice")
    if t.task is not None and not t.task.strip():
        out.append("the task must not be empty (leave it unset instead)")
    return out


def check(t: Template) -> None:
    """TemplateError naming every problem of ``t``."""
    found = problems(t)
    if found:
        raise TemplateError(f"template {t.name!r}: " + "; ".join(found))


def render(t: Template, prompt: str) -> str:
    """``t``'s text with ``prompt`` in its slot (nothing else in the text is interpreted: braces stay as they are)."""
    before, after = t.text.split(SLOT, 1)
    return before + prompt + after


def instruction(text: str) -> str:
    """``text`` without its worked-example lines (``Example: ...`` lines without the slot): where a protected
    marker must be. An example rendered with the template repeats its markers, so they cannot count there."""
    return "\n".join(line for line in text.split("\n") if not (line.startswith(EXAMPLE_PREFIX) and SLOT not in line))


def missing_markers(protected: tuple[str, ...], text: str) -> list[str]:
    """The protected markers the instruction of ``text`` (``instruction``: its example lines left out) lacks."""
    body = instruction(text)
    return [m for m in protected if m not in body]


def model_name(name: str) -> str:
    """The registry model of template ``name``."""
    return MODEL_PREFIX + name


def version_id(name: str, n: int) -> str:
    """The id of the ``n``-th registered version of template ``name``."""
    return f"{name}@{n}"


def version_number(name: str, version: str) -> int | None:
    """``n`` of version ``<name>@<n>``, or None when ``version`` is not of that shape."""
    head, sep, tail = version.rpartition("@")
    return int(tail) if sep and head == name and tail.isascii() and tail.isdigit() else None


@dataclass(frozen=True)
class TemplateRef:
    """What a request names: a template and, optionally, one version of it (None: its production version)."""

    name: str
    version: str | None

    @property
    def model(self) -> str:
        return model_name(self.name)


def parse_ref(ref: str) -> TemplateRef:
    """``name`` or ``name@n`` (``name@name@n``, a version id spelled in full, is taken too); TemplateError if it is
    neither."""
    name, sep, rest = ref.strip().partition("@")
    if not NAME.fullmatch(name):
        raise TemplateError(
            f"{ref!r} names no template: expected 'name' or 'name@version' (a name is a-z, 0-9, '_' and '-')"
        )
    if not sep:
        return TemplateRef(name, None)
    version = rest if rest.startswith(name + "@") else f"{name}@{rest}"
    if version_number(name, version) is None:
        raise TemplateError(f"{ref!r}: a template version is a number (e.g. {name}@1), not {rest!r}")
    return TemplateRef(name, version)


class Renderer(Protocol):
    """What the inference service needs of templates: a request's prompt rendered into the template it names."""

    def render(self, ref: str | None, prompt: str) -> tuple[str, str | None]:
        """(the prompt to generate from, the template version it was rendered with); ``ref`` None: the prompt as it
        is and no version. TemplateError when ``ref`` names no template or version that can serve."""
        ...


class NoTemplates:
    """A service that follows no governance log: a prompt is used as it is, a request naming a template refused."""

    def render(self, ref: str | None, prompt: str) -> tuple[str, str | None]:
        if ref is None:
            return prompt, None
        raise TemplateError(
            f"this service resolves no templates (the request names {ref!r}): serve it with "
            "`evostream serve --governed MODEL`, which follows the governance log's templates"
        )
