"""Headless runs of each notebook's headline experiment: `python -m kdteach NAME --mode full|smoke --out DIR`.

The way to reproduce the course's tables on a remote GPU without Jupyter. Each NAME maps to a module in
kdteach.experiments whose run(mode=..., out=...) the notebook calls too. Every bad choice (a name, a mode, a
dataset, a seed, an --out that cannot be written, a KDTEACH_CACHE that is a file) is a usage error (exit status 2)
that names the argument and what it allows, found before anything trains. A header line says what the run will
use (mode, device, data, output and cache folders) before it starts.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kdteach.data.text import TEXT_DATASETS
from kdteach import runtime

MODES = ("full", "smoke")
DEFAULT_MODE = "full"
DIGITS = "MNIST from the data folder (the scikit-learn digits stand-in where MNIST is absent)"


@dataclass(frozen=True)
class Experiment:
    """One command of the CLI.

    Attributes:
        module: its module in kdteach.experiments.
        summary: one line, for the list of commands.
        does: what it trains and measures, for its --help.
        data: what it reads, for --help and the header line.
    """

    module: str
    summary: str
    does: str
    data: str


EXPERIMENTS = {
    "hinton": Experiment("hinton", "notebook 01: teacher vs student vs distilled student on MNIST",
                         "Trains Hinton et al.'s 1200-1200 teacher and an 800-800 student alone and distilled at T = 20, "
                         "over several seeds, then a temperature sweep, the omitted-3 experiment and soft targets on 3% "
                         "of the data; prints test errors beside the paper's.", DIGITS),
    "spurious": Experiment("spurious", "notebook 02: teachers and students, group and worst-group accuracy",
                           "Trains an ERM and a group-balanced ResNet teacher and a smaller student alone and distilled "
                           "from each, over several seeds; reports group and worst-group accuracy and where the spurious "
                           "attribute becomes decodable (linear probes).", "the waterbirds_like stand-in (generated)"),
    "dedier": Experiment("dedier", "notebook 03: ERM, KD, JTT, Group DRO, SimKD-style and DeDiER, mean +- std over seeds",
                         "Trains students by six methods (ERM, KD, JTT, Group DRO, a reused teacher head, DeDiER) over "
                         "seeds, with readout diagnostics and the beta / alpha and readout-layer ablations.",
                         "the waterbirds_like and colored_digits stand-ins (generated)"),
    "text": Experiment("text", "notebook 04: BERT -> DistilBERT (or the offline stand-in) with early readouts",
                       "Trains a debiased text teacher, then KD and DeDiER students with a readout on an early "
                       "transformer layer; reports worst-group and average accuracy.",
                       "--dataset: standin (generated, offline), multinli or civilcomments (downloaded from the Hugging "
                       "Face Hub; a GPU is expected)"),
    "exits": Experiment("exits", "notebook 05: a multi-exit network, accuracy and compute per exit",
                        "Trains a multi-exit ResNet with and without exit distillation; reports accuracy, calibration and "
                        "compute per exit and times the real early-exit path.", DIGITS),
    "sets": Experiment("sets", "notebook 06: split conformal vs anytime-valid prediction sets per exit",
                       "Measures split conformal (LAC, APS, RAPS), their running intersections and anytime-valid sets at "
                       "every exit of notebook 05's model (reloaded or trained), and regression intervals on a wiggle "
                       "function.", DIGITS + "; a generated 1-D regression set"),
    "capstone": Experiment("capstone_report", "notebook 07: KD and DeDiER multi-exit students, coverage per exit and group",
                           "Distils multi-exit students with KD and DeDiER (its readout the first exit) and measures "
                           "coverage and size of LAC, RAPS, AVCS and group-conditional sets per exit and group.",
                           "ten-class coloured digits and the waterbirds_like stand-in (generated)"),
    "slides": Experiment("slides", "issue 23: slide-ready figures, one per paper's argument (soft targets, DeDiER, nested sets)",
                         "Draws one figure per paper from the course's models (reloaded where cached): a digit's soft targets at T = 1, 4 "
                         "and 20, DeDiER's readout -> margin -> weight on waterbirds_like images, and one digit's RAPS and AVCS sets "
                         "per exit; writes the numbers behind each figure beside it.", DIGITS + "; the waterbirds_like stand-in (generated)"),
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


def _seed(text: str) -> int:
    # argparse turns the ValueError into "argument --seed: invalid seed value: '...'"; the message says what is allowed.
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-command per experiment, each with --mode, --out, --seed, --no-progress.

    Returns:
        The parser (choices and defaults are in every argument's help).
    """
    parser = argparse.ArgumentParser(
        prog="python -m kdteach", description=__doc__.splitlines()[0],
        epilog=f"Run `python -m kdteach NAME --help` for what an experiment does. Every experiment runs in mode "
               f"{DEFAULT_MODE!r} unless --mode says otherwise (the KDTEACH_SMOKE variable is not read here).",
    )
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME",
                                help=f"one of: {', '.join(EXPERIMENTS)}")
    for name, experiment in EXPERIMENTS.items():
        p = sub.add_parser(name, help=experiment.summary, description=f"{experiment.does} Data: {experiment.data}.")
        p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                       help=f"full: the reference sizes (minutes to an hour; a GPU where the experiment needs one) or "
                            f"smoke: tiny data and few epochs on a CPU, numbers are not results (default: {DEFAULT_MODE})")
        p.add_argument("--out", type=Path, default=Path("runs") / name,
                       help=f"folder for the tables (JSON, Markdown) and figures, created if missing (default: runs/{name})")
        p.add_argument("--seed", type=_seed, default=0, help="first seed, a non-negative integer (default: 0)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
        if name == "text":
            p.add_argument("--dataset", choices=TEXT_DATASETS, default=None,
                           help="standin, multinli or civilcomments (default: standin, offline in both modes; the real ones download about 930 MB and want a GPU)")
    return parser


def _data_words(args: argparse.Namespace) -> str:
    if args.name != "text":
        return EXPERIMENTS[args.name].data
    dataset = args.dataset or "standin"
    return "standin (generated, offline)" if dataset == "standin" else f"{dataset} (from the Hugging Face Hub)"


def header(args: argparse.Namespace, device_name: str, cache: Path) -> str:
    """The line printed before a run: what it runs, in which mode, on which device, on which data, and where to.

    Args:
        args: the parsed arguments.
        device_name: the device in words (runtime.pick_device, with the GPU's name).
        cache: the cache folder models are kept in.

    Returns:
        One line.
    """
    return (f"kdteach {args.name}: mode {args.mode} | device {device_name} | seed {args.seed} | data {_data_words(args)} "
            f"| out {args.out} | cache {cache}")


def _device_name() -> str:

    device = runtime.pick_device()
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, checks them, prints the header line and runs one experiment.

    Args:
        argv: the arguments (None: sys.argv[1:]).

    Returns:
        The exit status (0); a usage error exits with status 2 through argparse.
    """

    parser = build_parser()
    args = parser.parse_args(argv)
    # Checked before anything trains: a full run that dies on its last line, writing the table, loses hours.
    problem = writable_folder(args.out)
    if problem:
        parser.error(f"--out: {problem}; pass a folder you can write to")
    try:
        cache = runtime.cache_dir()
    except ValueError as error:
        parser.error(str(error))
    print(header(args, _device_name(), cache), flush=True)
    module = importlib.import_module(f"kdteach.experiments.{EXPERIMENTS[args.name].module}")
    extra = {"dataset": args.dataset} if args.name == "text" else {}
    module.run(mode=args.mode, out=args.out, seed=args.seed, progress=not args.no_progress, **extra)
    print(f"kdteach: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
