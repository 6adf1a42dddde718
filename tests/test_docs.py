"""The front door stays a front door, and every link in the documentation leads to a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
REQUIRED = (
    "architecture",
    "cli",
    "configuration",
    "benchmarks",
    "producers",
    "stream-processors",
    "evolution",
    "governance",
    "sinks",
    "api",
)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 170
    for name in REQUIRED:
        assert (ROOT / "docs" / f"{name}.md").is_file(), name


def _resolves(page: Path, target: str) -> bool:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.is_relative_to(ROOT) or not dest.exists():
        return False
    return not anchor or dest.suffix != ".md" or anchor in _anchors(dest)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: outside links are allowed, files outside are not
            continue
        if not _resolves(page, target):
            broken.append(target)
    assert broken == [], f"{page.name}: {broken}"
