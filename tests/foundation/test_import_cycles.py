"""No import cycle anywhere in ``streams/``: a module never needs itself, however indirectly.

Read statically (``ast``), so no module is imported. Every import statement counts, wherever it
stands: at module level, inside a function (an import deferred to break a cycle is still a
cycle), and under ``if TYPE_CHECKING:``. ``from a.b import c`` depends on the module ``a.b.c``
when there is one, else on ``a.b``; ``import a.b.c`` depends on ``a.b.c``. The parent packages
Python runs on the way (``a``, ``a.b``) are not counted: a package's ``__init__`` re-exporting
its own modules is not a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import streams

PACKAGE_ROOT = Path(streams.__file__).parent


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> its file, for every ``.py`` file under ``root``."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that the module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, one level up per extra dot
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in known else module)
    return {target for target in targets if target in known and target != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other (strongly connected components with more
    than one module), sorted; Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def import_cycles(root: Path, package: str) -> list[list[str]]:
    known = modules(root, package)
    return cycles({name: imports(name, path, known) for name, path in known.items()})


def test_streams_has_no_import_cycle() -> None:
    found = import_cycles(PACKAGE_ROOT, "streams")
    assert len(modules(PACKAGE_ROOT, "streams")) > 100  # the whole package was read
    assert found == [], "modules that import each other: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_finds_a_cycle(tmp_path: Path) -> None:
    """A synthetic package with a cycle through a function-level import, one through
    ``TYPE_CHECKING`` and a relative import, and modules that only import without a cycle."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import thing\n",  # a package re-exporting: no cycle
        "a.py": "thing = 1\ndef later():\n    from pkg import b\n",
        "b.py": "import pkg.c\n",
        "c.py": "from pkg.a import thing\n",  # a -> b -> c -> a
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import e\n",
        "sub/__init__.py": "",
        "sub/e.py": "from .. import d\n",  # d <-> sub.e
        "f.py": "import pkg.a\nimport json\n",  # imports into a cycle without being in one
    }
    for name, text in files.items():
        (root / name).write_text(text)
    assert import_cycles(root, "pkg") == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.sub.e"]]
