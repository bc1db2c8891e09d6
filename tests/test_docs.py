"""The README and the pages under docs/: a short README that names the two set-up commands,
a package table that lists every module, relative links that resolve, and a loss example that
runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)
TICKED = re.compile(r"`([^`]+)`")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _relative_links(page: Path) -> list[tuple[Path, str]]:
    """``(target file, anchor)`` of every relative link and image in ``page``."""
    links = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https:, mailto:, or an anchor in the same page
        path, _, anchor = target.partition("#")
        links.append(((page.parent / path).resolve(), anchor))
    return links


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of ``page``'s headings: lower case, punctuation dropped, spaces as -."""
    headings = HEADING.findall(FENCE.sub("", page.read_text()))
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _package_table() -> set[str]:
    """The ``tdsnn/...`` paths in the first column of the README's package table (any markdown
    table whose first column holds backticked ``tdsnn/`` paths)."""
    listed = set()
    for line in README.read_text().splitlines():
        if line.startswith("|"):
            first = line.split("|")[1]
            listed |= {p for p in TICKED.findall(first) if p.startswith("tdsnn/")}
    return listed


def test_the_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines, more than {MAX_README_LINES}: move details to a page "
        "under docs/ and link it"
    )


@pytest.mark.parametrize("command", ["bash scripts/train.sh", "bash scripts/test.sh"])
def test_the_readme_names_the_two_set_up_commands(command: str) -> None:
    assert command in README.read_text(), f"README.md must show `{command}`"
    assert (ROOT / command.split()[1]).is_file(), f"{command.split()[1]} does not exist"


def test_the_package_table_lists_every_module() -> None:
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tdsnn").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    missing = sorted(modules - _package_table())
    assert not missing, f"modules missing from the README's package table: {', '.join(missing)}"


def test_the_package_table_lists_only_modules_that_exist() -> None:
    stale = sorted(p for p in _package_table() if not (p.endswith(".py") and (ROOT / p).is_file()))
    assert not stale, f"the README's package table names what is not a module: {', '.join(stale)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [
        f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}"
        + (f"#{anchor}" if anchor else "")
        for target, anchor in _relative_links(page)
        if not target.exists()
        or (anchor and target.suffix == ".md" and anchor not in _anchors(target))
    ]
    assert not broken, f"{page.relative_to(ROOT)}: broken links to {', '.join(broken)}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {target for target, _ in _relative_links(README)}
    unlinked = [p.relative_to(ROOT).as_posix() for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {', '.join(unlinked)}"


def test_the_readme_examples_of_the_losses_run(monkeypatch) -> None:
    """Each code block under "Using the losses in your own network" runs as written, alone."""
    monkeypatch.setenv("TDSNN_KERNELS", "reference")  # the same maths, without a kernel build
    section = README.read_text().split("## Using the losses in your own network", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    assert blocks, "no python example under 'Using the losses in your own network'"
    for i, code in enumerate(blocks):
        exec(compile(code, f"README example {i + 1}", "exec"), {})
