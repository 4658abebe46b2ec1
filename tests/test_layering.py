"""Layering: the gateway and the workers share the core (stockgate/), never each other.

The gateway reads what the workers write (alerts, the audit trail, failed deliveries) through
the stores in the core; importing a worker module instead would pull the workers' code (arq,
the adapters) into every gateway process and tie the two sides' internals together. Imports
inside functions count too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The command line starts both the gateway and the workers, so it alone may import them.
CORE_ENTRY_POINTS = frozenset({"cli.py"})


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth (functions included)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def offending(package: str, forbidden: tuple[str, ...], skip: frozenset[str] = frozenset()
              ) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name in skip and path.parent == ROOT / package:
            continue
        for line, module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_gateway_imports_nothing_from_the_workers() -> None:
    assert offending("gateway", ("workers",)) == []


def test_the_core_imports_neither_side() -> None:
    assert offending("stockgate", ("gateway", "workers"), CORE_ENTRY_POINTS) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from workers.queue import fetch_order\n"
                      "    import workers.alerts\n")
    assert imported_modules(module) == [(2, "workers.queue"), (3, "workers.alerts")]
