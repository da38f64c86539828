"""The README and the docs site as files: the README stays a short front page whose links
and make targets exist, and no page points at documents outside the repo. (`make docs`
checks the site's own links and anchors with mkdocs --strict.)"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
#: A markdown link or image: [text](target) or [text](target "title").
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```[ \t]*$", flags=re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs and GitHub make it for plain words (toc's slugify)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The anchors of a markdown page's headings (fenced code blocks skipped)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(title) for title in re.findall(r"^#{1,6} (.+?)\s*#*\s*$", text, flags=re.M)}


def relative_links(page: Path) -> list[str]:
    """The targets of the page's markdown links that are neither URLs nor mail addresses."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE)
    ]


def code_text(page: Path) -> str:
    """The page's code: inline code spans and the lines of fenced blocks, one per line."""
    text = page.read_text(encoding="utf-8")
    blocks = [match.group(0) for match in FENCE.finditer(text)]
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
    return "\n".join([*blocks, *spans])


def test_the_readme_is_at_most_300_lines() -> None:
    """README.md is a front page of at most 300 lines; the rest lives in docs/."""
    # Given / When
    lines = README.read_text(encoding="utf-8").splitlines()

    # Then
    assert len(lines) <= 300, f"README.md has {len(lines)} lines"


def test_every_relative_link_of_the_readme_resolves() -> None:
    """Each relative link of README.md names an existing file, and an anchor one of its
    headings."""
    # Given
    links = relative_links(README)
    assert any(link.startswith("docs/") for link in links), "no link to the docs"

    # When
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else README
        if not target.is_file():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no such heading")

    # Then
    assert broken == []


def test_no_page_refers_to_documents_outside_the_repo() -> None:
    """README.md, docs/ and grafana/ name no DESIGN document and nothing under ../shared."""
    # Given
    files = [README, *sorted((ROOT / "docs").rglob("*")), *sorted((ROOT / "grafana").rglob("*"))]

    # When
    found = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in files
        if path.is_file()
        for word in ("DESIGN", "../shared")
        if word in path.read_text(encoding="utf-8")
    ]

    # Then
    assert found == []


def test_every_make_target_the_readme_names_exists() -> None:
    """Every `make TARGET` in the README's code is a target of the Makefile."""
    # Given
    defined = set(re.findall(r"^([\w.-]+):", MAKEFILE.read_text(encoding="utf-8"), flags=re.M))

    # When
    named = set(re.findall(r"(?<![\w./-])make ([a-z][\w-]*)", code_text(README)))

    # Then
    assert {"demo", "test", "dev", "docs"} <= named
    assert sorted(named - defined) == []
