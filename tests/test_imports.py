"""The package's imports stay layered: no module imports kdteach inside a function (the usual way to dodge an import
cycle, which hides the cycle instead of removing it), except the few allowed below with their reason, and every
module imports in a fresh interpreter.

Lazy imports of optional third-party libraries (transformers, datasets, sklearn, google.colab, ...) are not checked:
they keep `import kdteach` working without the extras, and they break no cycle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdteach"

# (module file relative to kdteach/, function) -> why it may import kdteach inside the function.
ALLOWED: dict[tuple[str, str], str] = {}  # every import of kdteach sits at the top of its module


def _imports_kdteach(node: ast.AST) -> str | None:
    # The kdteach module an import statement names, or None for any other import.
    if isinstance(node, ast.Import):
        return next((a.name for a in node.names if a.name == "kdteach" or a.name.startswith("kdteach.")), None)
    if isinstance(node, ast.ImportFrom):
        if node.level > 0:  # a relative import inside the package
            return "." * node.level + (node.module or "")
        if node.module and (node.module == "kdteach" or node.module.startswith("kdteach.")):
            return node.module
    return None


def function_level_imports(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, imported module) for every import of kdteach inside a function or method of a source file.

    Args:
        path: a Python file.

    Returns:
        One entry per such import statement (nested functions are named by their own name).
    """
    found = []
    for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            module = _imports_kdteach(node)
            if module is not None:
                found.append((function.name, node.lineno, module))
    return found


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_scan_finds_a_function_level_import(tmp_path: Path) -> None:
    # The scanner itself: a cycle-dodging import inside a method and a nested function is found; module-level and
    # TYPE_CHECKING imports and third-party imports inside functions are not.
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nimport kdteach.report\nif TYPE_CHECKING:\n    from kdteach.groups import Competence\n"
        "class A:\n    def method(self):\n        from kdteach.train import predict\n"
        "def outer():\n    import sklearn\n    def inner():\n        import kdteach.results as r\n    from . import checks\n",
        encoding="utf-8")
    found = function_level_imports(source)
    assert (("method", 7, "kdteach.train") in found and ("inner", 11, "kdteach.results") in found
            and ("outer", 12, ".") in found)
    assert not [f for f in found if f[2] in ("kdteach.report", "kdteach.groups", "sklearn")]


def test_no_function_imports_kdteach_except_the_allowed_ones() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for function, line, module in function_level_imports(path):
            found.setdefault((path.relative_to(PACKAGE).as_posix(), function), []).append(f"line {line}: {module}")
    unexpected = {key: lines for key, lines in found.items() if key not in ALLOWED}
    assert not unexpected, ("imports of kdteach inside functions (move them to the top, or remove the cycle they dodge): "
                            f"{unexpected}")
    stale = [key for key in ALLOWED if key not in found]
    assert not stale, f"allowed but no longer there (remove from ALLOWED): {stale}"
    assert all(reason.strip() for reason in ALLOWED.values())


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    modules = _modules()
    assert "kdteach.course" in modules and "kdteach.experiments.common" in modules
    # One interpreter, every module in turn: a cycle shows as an ImportError naming a partly initialised module.
    # (Importing kdteach.X runs kdteach/__init__.py first, so this also covers the lazily loaded experiments.)
    script = ("import importlib, sys, traceback\nfailed = []\nfor name in sys.argv[1:]:\n    try:\n"
              "        importlib.import_module(name)\n    except Exception:\n        failed.append(name + ': ' + traceback.format_exc(limit=3))\n"
              "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n")
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"modules that do not import:\n{done.stdout}{done.stderr[-3000:]}"
