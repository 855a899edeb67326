"""Which version of an experiment's code made a result: a hash of every package module the experiment runs.

A committed notebook shows the outputs of one run, and results/ holds another; the two agree only when both ran the
same experiment code. A commit hash cannot tell (the outputs are always made after the results are committed, and
most commits touch neither), so this hashes the code itself: the experiment's module and every kdteach module it
imports, directly or not, found by reading their import statements. Each module enters as its syntax tree without
docstrings, so rewording a comment or a docstring keeps the version, and changing a line of code changes it.

provenance() records the version in every result file, and course.setup() prints the notebook's version beside the
committed result's, so tests/test_committed_outputs.py can refuse outputs from other code.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

__all__ = ["EXPERIMENT_MODULES", "experiment_code_version", "module_closure", "code_version"]

PACKAGE_DIR = Path(__file__).resolve().parent  # kdteach/
# The module whose run() writes each experiment's result (the CLI's mapping): its closure is the experiment's code.
EXPERIMENT_MODULES = {"hinton": "kdteach.experiments.hinton", "spurious": "kdteach.experiments.spurious",
                      "dedier": "kdteach.experiments.dedier", "text": "kdteach.experiments.text",
                      "exits": "kdteach.experiments.exits", "sets": "kdteach.experiments.sets",
                      "capstone": "kdteach.experiments.capstone_report", "slides": "kdteach.experiments.slides"}


def _path_of(module: str) -> Path | None:
    # kdteach.a.b -> kdteach/a/b.py or kdteach/a/b/__init__.py; None for anything that is not a package module.
    parts = module.split(".")
    if parts[0] != "kdteach":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if len(parts) > 1 and path.is_file():
            return path
    return None


def _imports(module: str) -> set[str]:
    """The kdteach modules a module imports (its parent packages too: importing a.b runs a/__init__.py)."""
    path = _path_of(module)
    assert path is not None
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # from kdteach.a import b: b is a module or a name in kdteach.a
            found.update(f"{base}.{alias.name}" if _path_of(f"{base}.{alias.name}") else base for alias in node.names)
    modules = set()
    for name in found:
        while name.count(".") and _path_of(name) is None:  # kdteach.a.b.name -> kdteach.a.b
            name = name.rpartition(".")[0]
        parts = name.split(".")
        # the module and its parent packages below kdteach (kdteach/__init__.py is the notebooks' convenience import)
        modules.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if _path_of(".".join(parts[:i])))
    return modules


def module_closure(module: str) -> tuple[str, ...]:
    """Every kdteach module `module` imports, directly or through others, and itself, sorted.

    Args:
        module: a dotted kdteach module name ("kdteach.experiments.hinton").

    Returns:
        The dotted names, sorted.

    Raises:
        ValueError: naming module when it is not a module of the package.
    """
    if not isinstance(module, str) or _path_of(module) is None:
        raise ValueError(f"module must be a kdteach module such as 'kdteach.experiments.hinton', got {module!r}")
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name) - seen)
    return tuple(sorted(seen))


def _without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def code_version(module: str) -> str:
    """The version of a module's code: 12 hex digits of a SHA-256 over its closure, each module's syntax tree without
    docstrings (comments never reach the tree), so only a change to the code itself changes it.

    Args:
        module: a dotted kdteach module name.

    Returns:
        12 lowercase hex digits.

    Raises:
        ValueError: naming module when it is not a module of the package.
    """
    digest = hashlib.sha256()
    for name in module_closure(module):
        path = _path_of(name)
        assert path is not None
        digest.update(f"{name}\0{_without_docstrings(path.read_text(encoding='utf-8'))}\0".encode())
    return digest.hexdigest()[:12]


@lru_cache(maxsize=None)
def experiment_code_version(name: str) -> str:
    """code_version() of an experiment's module (EXPERIMENT_MODULES), computed once per process.

    Args:
        name: an experiment ("hinton", "spurious", ...).

    Returns:
        12 lowercase hex digits.

    Raises:
        ValueError: naming name when it is not one of EXPERIMENT_MODULES.
    """
    if name not in EXPERIMENT_MODULES:
        raise ValueError(f"name must be one of {', '.join(EXPERIMENT_MODULES)}, got {name!r}")
    return code_version(EXPERIMENT_MODULES[name])
