"""Executes notebooks in full mode and stores their outputs in place: what a reader sees before running anything.

`make notebook-outputs` runs it over every course and solutions notebook. Point KDTEACH_CACHE at the cache of the
runs that wrote results/, so the notebooks reload those models and their outputs agree with the committed results
(tests/test_committed_outputs.py checks the mode and the experiment code version); without it they train every model
first, which takes as long as the reference runs.

A notebook that fails keeps its previous file (the new one is written only after every cell ran), and the others
still run; the exit status says whether any failed.
Usage: python .ci/store_notebook_outputs.py notebooks/*.ipynb notebooks/solutions/*.ipynb
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm import tqdm

# The kernels inherit this environment: full mode, and the inline backend (CI's MPLBACKEND=Agg would draw nothing).
if os.environ.pop("KDTEACH_SMOKE", None):
    print("store_notebook_outputs: KDTEACH_SMOKE was set; ignoring it, the stored outputs are full mode")
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"


def execute(path: Path) -> float:
    """Runs every cell of one notebook in its own folder and replaces the file; returns the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    # record_timing=False: no per-cell timestamps, so a rerun with the same numbers leaves the file unchanged
    NotebookClient(notebook, timeout=None, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".ipynb.tmp", delete=False, encoding="utf-8") as tmp:
        nbformat.write(notebook, tmp)
    os.replace(tmp.name, path)
    return time.perf_counter() - started


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    if not os.environ.get("KDTEACH_CACHE"):
        print("store_notebook_outputs: KDTEACH_CACHE is not set, so the notebooks use the default cache; set it to the "
              "cache of the runs that wrote results/ for outputs that agree with them")
    failed = []
    for path in (bar := tqdm([Path(p) for p in paths], unit="notebook")):
        bar.set_description(path.name)
        try:
            seconds = execute(path)
        except CellExecutionError as error:
            failed.append(path.name)
            tqdm.write(f"{path}: FAILED, file left as it was:\n{str(error)[-2000:]}")
            continue
        tqdm.write(f"{path}: {seconds / 60:.1f} min")
    if failed:
        print(f"store_notebook_outputs: {len(failed)} failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
