"""Each notebook's headline experiment as a function: the notebook and `python -m kdteach NAME` call the same code."""
