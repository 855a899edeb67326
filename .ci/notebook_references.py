"""Gives NBVAL_CHECK_OUTPUT cells back an execution count after nbstripout.

nbval compares the output of cells marked `# NBVAL_CHECK_OUTPUT` with the output stored in the notebook, and treats a
stored cell without an execution count as never run. nbstripout keeps those cells' outputs (they carry the
keep_output metadata) but always clears counts, so this step restores a count of 1 on them and nothing else.
Usage: python .ci/notebook_references.py notebooks/*.ipynb
"""
import sys

import nbformat

MARK = "# NBVAL_CHECK_OUTPUT"

for path in sys.argv[1:]:
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and cell.source.startswith(MARK) and cell.get("outputs"):
            cell.metadata["keep_output"] = True
            if cell.execution_count is None:
                cell.execution_count, changed = 1, True
    if changed:
        nbformat.write(notebook, path)
        print(f"{path}: restored execution counts of reference cells")
