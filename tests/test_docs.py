"""The README and the manual in docs/: every relative link resolves (file and heading), every page is reachable
from the manual's index, and the README stays the short way in."""

import glob
import os
import re

import pytest

from helpers import ROOT

# [text](target) and ![alt](target), outside code spans; a target has no spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[str]:
    return [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "BENCHMARKS.md"),
            *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _prose(path: str) -> str:
    """The page without fenced code blocks and inline code, where brackets are code, not links."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def _links(path: str) -> list[str]:
    return [t for t in LINK.findall(_prose(path)) if not re.match(r"[a-z]+:", t)]


def broken_links(path: str) -> list[str]:
    """Each relative link of `path` whose file, or heading in a markdown file, does not exist."""
    broken = []
    for target in _links(path):
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(resolved):
            broken.append(f"{target} (no file {os.path.relpath(resolved, ROOT)})")
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {os.path.relpath(resolved, ROOT)})")
    return broken


@pytest.mark.parametrize("page", _pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(page):
    assert not broken_links(page)


def test_the_checker_sees_a_broken_link_and_a_missing_heading(tmp_path):
    (tmp_path / "b.md").write_text("# A title\n\n## Some `code` heading: yes\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md) [ok](b.md#some-code-heading-yes) [gone](c.md) [no](b.md#nothing) "
                    "`[code](not-a-link.md)` [web](https://example.org)\n```\n[fenced](x.md)\n```\n")
    assert broken_links(str(page)) == ["c.md (no file " + os.path.relpath(tmp_path / "c.md", ROOT) + ")",
                                       "b.md#nothing (no heading #nothing in "
                                       + os.path.relpath(tmp_path / "b.md", ROOT) + ")"]


def test_the_manual_index_reaches_every_page_and_the_readme_stays_short():
    index = os.path.join(ROOT, "docs", "README.md")
    linked = {os.path.normpath(os.path.join(ROOT, "docs", t.partition("#")[0])) for t in _links(index)}
    pages = {p for p in glob.glob(os.path.join(ROOT, "docs", "*.md")) if p != index}
    assert len(pages) >= 5 and not pages - linked, sorted(pages - linked)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 250
