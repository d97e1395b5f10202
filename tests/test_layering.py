"""The dependency direction of DESIGN section 3: flows -> infra, tasks, catalogs -> models."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = {"flows", "tasks", "models", "catalogs", "infra"}
FORBIDDEN = {  # package -> top-level modules it must never import
    "models": OURS - {"models"},
    "catalogs": {"torch", "tasks", "flows", "infra", "models", "prefect", "ray"},
    "tasks": {"prefect", "ray", "flows", "infra"},
    "infra": {"flows"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_packages_import_only_downwards():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for f in (REPO / pkg).rglob("*.py"):
            hit = imported_roots(f) & forbidden
            if hit:
                bad.append(f"{f.relative_to(REPO)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


def test_catalogs_load_without_torch():
    code = ("import sys, catalogs.ingest, catalogs.plan, catalogs.manifest, catalogs.runs, catalogs.registry;"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
