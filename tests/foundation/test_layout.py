"""The README's Layout section is the tree: every module and folder of the package (and of its
lab) and every deploy/ recipe is named there, and everything named there exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import REPO

SKIPPED = {"__init__.py", "__main__.py", "__pycache__"}


def layout_block() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1].splitlines()


def named(indent: int, lines: list[str], under: str) -> set[str]:
    """The entries at this indentation within the lines that follow ``under``'s entry."""
    start = next(i for i, line in enumerate(lines) if line.split(maxsplit=1)[:1] == [under])
    found: set[str] = set()
    for line in lines[start + 1:]:
        depth = len(line) - len(line.lstrip())
        if line.strip() and depth < indent:
            break
        if depth == indent:
            found.add(line.split()[0].rstrip("/"))
    return found


def entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name not in SKIPPED}


def test_the_layout_names_every_module_of_the_package_and_nothing_else() -> None:
    lines = layout_block()
    assert named(2, lines, "streams/") == entries(REPO / "streams")
    assert named(4, lines, "lab/") == entries(REPO / "streams" / "lab")


def test_the_layout_names_every_recipe_and_every_named_path_exists() -> None:
    lines = layout_block()
    top = [line.split()[0] for line in lines if line[:1].strip()]
    for path in top:
        assert (REPO / path).exists(), path
    recipes = {p.split("/")[1] for p in top if re.match(r"deploy/[^/]+", p)}
    assert recipes == entries(REPO / "deploy")
