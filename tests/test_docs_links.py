"""The repository stands alone: every relative link of README.md and docs/*.md resolves
to a file (and heading) inside the checkout, and no text points at documents a clone
does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Built from pieces so that this file does not contain them itself.
OUTSIDE = ["../" + "shared", "DESIGN" + ".md", "STYLE" + ".md"]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(doc):
    bad = []
    for target in _links(doc):
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        if not path.is_relative_to(ROOT) or not path.exists():
            bad.append(f"{target}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            bad.append(f"{target}: no heading #{anchor} in {path.name}")
    assert bad == [], f"{doc.name}: {bad}"


def test_the_docs_and_code_name_no_document_outside_the_repository():
    found = []
    for top in ("README.md", "docs", "mailsync", "schemas", "tests", "monitoring", "systemd"):
        paths = [ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*")
        for path in paths:
            if path.is_file() and path.suffix in (".md", ".py", ".json", ".yml", ".yaml"):
                text = path.read_text(errors="replace")
                found += [f"{path.relative_to(ROOT)}: {o}" for o in OUTSIDE if o in text]
    assert found == []


def test_the_contract_links_the_detailed_documents():
    design = (ROOT / "docs" / "design.md").read_text()
    for doc in ("outbound.md", "inbound.md", "daemon.md", "monitoring.md", "store.md",
                "systemd.md", "activities.md", "oauth2.md", "contract-notes.md"):
        assert f"]({doc}" in design  # the file, or one of its headings
    assert "](docs/design.md)" in (ROOT / "README.md").read_text()
