"""nbval setup for the notebooks: kernels draw figures inline, and every course notebook must produce figures.

CI exports MPLBACKEND=Agg for the unit tests; a kernel that inherits it skips the inline backend and draws nothing,
so nbval would pass notebooks whose figures never render. The kernels nbval starts inherit this process's
environment, so the inline backend is set here, before any kernel starts. After the run, each course notebook that
ran must have produced at least one PNG figure (counted from the outputs nbval collected), or the session fails.
"""
import os
from collections import Counter
from pathlib import Path

os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

FIGURES: Counter = Counter()
RAN: set = set()


def pytest_runtest_makereport(item, call):
    outputs = getattr(item, "test_outputs", None)
    if call.when == "call" and outputs is not None:
        name = Path(str(item.fspath)).name
        RAN.add(name)
        FIGURES[name] += sum(1 for out in outputs if "image/png" in (out.get("data") or {}))


def pytest_sessionfinish(session, exitstatus):
    course = sorted(n for n in RAN if n[:2].isdigit() and "_solutions" not in n)
    if not course:
        return
    print("\nfigures drawn per notebook: " + ", ".join(f"{n} {FIGURES[n]}" for n in course))
    empty = [n for n in course if FIGURES[n] == 0]
    if empty and session.exitstatus == 0:
        print(f"FAILED: these notebooks drew no figure (is the inline backend on?): {empty}")
        session.exitstatus = 1
