"""Every third-party module relay/ imports is declared in pyproject.toml.

A module that only the test extras pull in (cryptography came with moto) works in the test venv and
dies with ModuleNotFoundError in a clean install. An optional module (uvloop) may be imported only
inside `try: ... except ImportError:` and must then be declared in a user-facing extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "relay"
NOT_FOR_USERS = {"test", "bench"}  # extras a user never installs to run the relay


@dataclass(frozen=True)
class Import:
    module: str  # top-level name
    where: str  # file:line
    optional: bool  # inside a try whose handler catches ImportError


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def imports_in(source: str, filename: str) -> list[Import]:
    """Absolute imports of non-stdlib, non-relay modules in one file."""
    found: list[Import] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Try):
            guarded = optional or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, guarded)
            for child in (*node.handlers, *node.orelse, *node.finalbody):
                visit(child, optional)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".", 1)[0]
            if top not in sys.stdlib_module_names and top not in ("relay", "__future__"):
                found.append(Import(top, f"{filename}:{node.lineno}", optional))
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(source, filename), False)
    return found


def declared(pyproject: dict) -> tuple[set[str], set[str]]:
    """(required distributions, distributions in user-facing extras), normalised."""
    project = pyproject["project"]
    required = {_normalise(Requirement(r).name) for r in project.get("dependencies", [])}
    extras = {
        _normalise(Requirement(r).name)
        for extra, reqs in project.get("optional-dependencies", {}).items()
        if extra not in NOT_FOR_USERS
        for r in reqs
    }
    return required, extras


def undeclared(found: list[Import], required: set[str], extras: set[str]) -> list[str]:
    """One line per import whose distribution pyproject does not promise."""
    providers = importlib.metadata.packages_distributions()
    problems = []
    for imp in found:
        # Not installed (an optional module such as uvloop): assume the distribution has its name.
        dists = {_normalise(d) for d in providers.get(imp.module, [imp.module])}
        if not dists & required and not (imp.optional and dists & extras):
            need = "[project.optional-dependencies] (a user-facing extra)" if imp.optional else (
                "[project] dependencies")
            problems.append(f"{imp.where}: {imp.module} (from {'/'.join(sorted(dists))}) is not in {need}")
    return problems


def test_every_runtime_import_is_a_declared_dependency() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = [
        imp
        for path in sorted(PACKAGE.rglob("*.py"))
        for imp in imports_in(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert {imp.module for imp in found} >= {"aiosmtpd", "boto3"}, "the import scan found nothing"
    problems = undeclared(found, *declared(pyproject))
    assert not problems, "undeclared runtime imports:\n" + "\n".join(problems)


def test_optional_import_needs_an_import_error_guard_and_an_extra() -> None:
    source = (
        "import yaml\n"
        "try:\n    import uvloop\nexcept ImportError:\n    uvloop = None\n"
        "def f():\n    import boto3.session\n"
        "try:\n    import aiohttp\nexcept ValueError:\n    pass\n"
    )
    found = imports_in(source, "x.py")
    assert [(i.module, i.optional) for i in found] == [
        ("yaml", False), ("uvloop", True), ("boto3", False), ("aiohttp", False)
    ]
    required = {"pyyaml", "boto3"}
    assert undeclared(found, required, extras={"uvloop"}) == [
        "x.py:9: aiohttp (from aiohttp) is not in [project] dependencies"
    ]
    # A guarded import is still required to be declared somewhere a user can install it.
    assert undeclared(found, required | {"aiohttp"}, extras=set()) == [
        "x.py:3: uvloop (from uvloop) is not in [project.optional-dependencies] (a user-facing extra)"
    ]
