"""README.md and docs/: every relative link and image points at a file of the checkout, every #anchor at a
heading of its page, every docs/ page is reachable from README, and the citation files name the paper."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from doc_pages import ROOT, doc_pages

PAPER = "IdGlow: Dynamic Identity Modulation for Multi-Subject Generation"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def links(page: Path) -> list[str]:
    """The link targets of the page outside code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not t.startswith(("http://", "https://", "mailto:"))]


def broken_links(page: Path) -> list[str]:
    """Targets of ``page`` that name no file, or no heading of the page they point into."""
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    return broken


def test_anchor_slugs_follow_github(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Real weights (GPU)\n## `idglow data build-sft`\n```bash\n# not a heading\n```\n")
    assert anchors(page) == {"real-weights-gpu", "idglow-data-build-sft"}
    (tmp_path / "q.md").write_text("[a](p.md#real-weights-gpu) [b](p.md#not-a-heading) [c](missing.md)\n")
    assert broken_links(tmp_path / "q.md") == ["p.md#not-a-heading", "missing.md"]


def test_every_link_and_image_resolves():
    broken = {page.name: broken_links(page) for page in doc_pages()}
    assert not any(broken.values()), broken


def test_readme_reaches_every_docs_page_and_shows_its_picture():
    readme = ROOT / "README.md"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(readme) if t.partition("#")[0]}
    pages = set((ROOT / "docs").glob("*.md"))
    assert pages and pages <= linked, sorted(p.name for p in pages - linked)
    images = [t for t in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme.read_text()) if not t.startswith("http")]
    assert images and all((ROOT / i).stat().st_size > 10_000 for i in images), images


def test_citations_name_the_paper_and_the_software():
    readme = (ROOT / "README.md").read_text()
    bibtex = readme.split("```bibtex\n", 1)[1].split("```", 1)[0]
    assert PAPER in bibtex and "2603.00607" in bibtex
    assert bibtex.count("{") == bibtex.count("}")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "Apache-2.0"
    project = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{cff["version"]}"' in project
    assert [r["title"] for r in cff["references"]] == [PAPER]
