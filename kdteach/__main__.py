"""Headless runs of each notebook's headline experiment: `python -m kdteach NAME --mode full|smoke --out DIR`.

The way to reproduce the course's tables on a remote GPU without Jupyter. Each NAME maps to a module in
kdteach.experiments whose run(mode=..., out=...) the notebook calls too.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

# command -> (module in kdteach.experiments, what it runs)
EXPERIMENTS = {
    "hinton": ("hinton", "notebook 01: teacher vs student vs distilled student on MNIST"),
    "spurious": ("spurious", "notebook 02: teachers and students, group and worst-group accuracy"),
    "dedier": ("dedier", "notebook 03: ERM, KD, JTT, Group DRO, SimKD-style and DeDiER, mean +- std over seeds"),
    "text": ("text", "notebook 04: BERT -> DistilBERT (or the offline stand-in) with early readouts"),
    "exits": ("exits", "notebook 05: a multi-exit network, accuracy and compute per exit"),
    "sets": ("sets", "notebook 06: split conformal vs anytime-valid prediction sets per exit"),
    "capstone": ("capstone", "notebook 07: KD and DeDiER multi-exit students, coverage per exit and group"),
}


def writable_folder(out: Path) -> str | None:
    """Why out cannot take the run's files (None when it can): it is created if missing, and written to once.

    Args:
        out: the --out folder.

    Returns:
        None, or the reason in words.
    """
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # permissions, a read-only disk: what a real write would meet
            pass
    except OSError as error:
        return f"{out} cannot be created or written to ({error.strerror or error})"
    return None


def main(argv: list[str] | None = None) -> int:
    """Parses arguments and runs one experiment; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m kdteach", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (_, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--mode", choices=("full", "smoke"), default="full", help="full: real sizes (GPU); smoke: tiny, CPU")
        p.add_argument("--out", type=Path, default=Path("runs") / name, help="folder for the table (JSON, Markdown) and figures")
        p.add_argument("--seed", type=int, default=0, help="first seed")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        if name == "text":
            p.add_argument("--dataset", default=None,
                           help="standin, multinli or civilcomments (default: the stand-in in smoke mode, MultiNLI in full mode)")
    args = parser.parse_args(argv)
    # Checked before anything trains: a full run that dies on its last line, writing the table, loses hours.
    problem = writable_folder(args.out)
    if problem:
        parser.error(f"--out: {problem}; pass a folder you can write to")
    module = importlib.import_module(f"kdteach.experiments.{EXPERIMENTS[args.name][0]}")
    extra = {"dataset": args.dataset} if args.name == "text" else {}
    module.run(mode=args.mode, out=args.out, seed=args.seed, progress=not args.no_progress, **extra)
    print(f"kdteach: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
