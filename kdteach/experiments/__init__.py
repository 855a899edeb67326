"""Each notebook's headline experiment as a module: the notebook and `python -m kdteach NAME` call the same code.

Submodules are imported on first use (kd.experiments.hinton, ...), so `import kdteach` stays quick and the text
experiment's transformers import is paid only by those who run it.
"""
import importlib
from types import ModuleType

_MODULES = ("hinton", "spurious", "dedier", "text", "exits", "sets", "capstone", "slides")


def __getattr__(name: str) -> ModuleType:
    if name in _MODULES:
        return importlib.import_module(f"kdteach.experiments.{name}")
    raise AttributeError(f"module 'kdteach.experiments' has no attribute {name!r}")
