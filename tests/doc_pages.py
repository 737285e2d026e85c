"""README.md and the docs/ pages it links, in reading order: the tests that run or look up documented commands
read them all through these helpers, so a command or section may live on any page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the order in which the command tests run the pages' blocks (later blocks use files earlier ones made)
ORDER = ("README.md", "docs/app.md", "docs/training.md", "docs/commands.md", "docs/annotation.md",
         "docs/real-weights.md", "docs/serving.md", "docs/privacy.md", "docs/evidence.md", "docs/internals.md")


def doc_pages() -> list[Path]:
    """README.md, then every docs/*.md: those of ORDER in that order, any other page after them by name."""
    listed = [ROOT / name for name in ORDER]
    others = sorted(p for p in (ROOT / "docs").glob("*.md") if p not in listed)
    return [p for p in listed if p.is_file()] + others


def bash_blocks() -> list[str]:
    """The text of every ```bash block of the documentation pages, in page order."""
    blocks = []
    for page in doc_pages():
        blocks += re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    return blocks


def section(heading: str) -> str:
    """The text after the Markdown heading ``heading`` (any level) on the one page that has it."""
    pattern = re.compile(rf"^#+ {re.escape(heading)}\s*$", re.M)
    found = [(page, m) for page in doc_pages() for m in [pattern.search(page.read_text(encoding="utf-8"))] if m]
    assert len(found) == 1, f"{heading!r} is a heading on {len(found)} documentation pages, expected 1"
    page, match = found[0]
    return page.read_text(encoding="utf-8")[match.end():]


def after_text(text: str) -> str:
    """Everything after the first occurrence of ``text`` on the documentation pages (in page order)."""
    for page in doc_pages():
        content = page.read_text(encoding="utf-8")
        if text in content:
            return content.split(text, 1)[1]
    raise AssertionError(f"no documentation page contains {text!r}")
