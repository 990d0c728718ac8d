"""Every Kafka admin client is destroyed by the code that made it (``with admin(settings) as
client:``, or an ``ExitStack`` for one that lives as long as its owner). An admin client resolves
its futures in Python on a librdkafka thread of its own; one left to the garbage collector can
be collected on that very thread, and librdkafka then aborts the whole process (it did, once, in
the middle of a test run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tests.support import REPO

CONSTRUCTORS = {"admin", "AdminClient"}


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def unmanaged_admin_clients(source: str) -> Iterator[int]:
    """Line of every admin client made outside a ``with`` item or ``enter_context(...)``, except
    the factory's own ``return`` in ``def admin``."""
    tree = ast.parse(source)
    managed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            managed.update(id(item.context_expr) for item in node.items)
        elif isinstance(node, ast.Call) and _called(node) == "enter_context":
            managed.update(id(arg) for arg in node.args)
        elif isinstance(node, ast.FunctionDef) and node.name == "admin":
            managed.update(id(stmt.value) for stmt in node.body if isinstance(stmt, ast.Return))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) in CONSTRUCTORS and id(node) not in managed:
            yield node.lineno


def test_every_admin_client_is_closed_by_the_code_that_made_it() -> None:
    files = sorted((REPO / "streams").rglob("*.py")) + sorted((REPO / "tests").rglob("*.py"))
    found = [f"{path.relative_to(REPO)}:{line}" for path in files
             for line in unmanaged_admin_clients(path.read_text())]

    assert found == []


def test_the_check_finds_a_client_left_to_the_garbage_collector() -> None:
    source = ("def members(settings):\n"
              "    client = admin(settings)\n"
              "    return client.describe_consumer_groups(['g'])\n"
              "def fine(settings):\n"
              "    with admin(settings) as client:\n"
              "        return client.list_topics()\n")

    assert list(unmanaged_admin_clients(source)) == [2]
