"""The text datasets of notebook 04 as TextSplit (texts, labels and groups): MultiNLI and CivilComments with their
spurious groups, and an offline stand-in. Tokenizing and encoding them is kdteach.data.text's part.

The two real datasets the DeDiER paper uses for text, and the shortcut each one offers:

- MultiNLI (premise, hypothesis) -> entailment / neutral / contradiction. Annotators asked to write a contradiction
  often negated the premise, so a negation word in the hypothesis ("no", "never", "nobody", "nothing") predicts
  "contradiction" without reading the premise (Gururangan et al. 2018). Groups: label x (negation word or not), 6.
- CivilComments (WILDS v1.0): comment -> toxic (toxicity >= 0.5). Comments that mention an identity (female,
  muslim, black, ...) are toxic more often, so the identity word itself predicts "toxic". Groups: (identity,
  label) for each of 8 identities, 16 in all; they OVERLAP (a comment can mention several identities), so they
  are a boolean membership matrix (N, 16), which kdteach.groups accepts.

The stand-in (nli_standin) is an NLI-style set generated here, with the same kind of shortcut planted: a phrase
holding a negation word appears in most training contradictions and few other training pairs, and independently
of the label in validation and test.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kdteach import checks, runtime
from kdteach.groups import group_ids

__all__ = [
    "NEGATION_WORDS",
    "NLI_CLASSES",
    "NLI_GROUP_NAMES",
    "CIVIL_IDENTITIES",
    "CIVIL_GROUP_NAMES",
    "CIVILCOMMENTS_URL",
    "TextSplit",
    "has_negation",
    "negation_groups",
    "multinli_split",
    "load_multinli",
    "civil_membership",
    "civilcomments_split",
    "find_civilcomments",
    "load_civilcomments",
    "nli_standin",
]

# The negation words of Gururangan et al. (2018) and Sagawa et al. (2020), the group definition DeDiER uses.
NEGATION_WORDS = ("nobody", "no", "never", "nothing")
NLI_CLASSES = ("entailment", "neutral", "contradiction")  # MultiNLI's label ids 0, 1, 2
# Group id = 2 * label + negation (kdteach.groups.group_ids), so the names follow that order.
NLI_GROUP_NAMES = tuple(f"{c}, {n}" for c in NLI_CLASSES for n in ("no negation", "negation"))

# The eight identities WILDS evaluates CivilComments on; a comment mentions one when its score is >= 0.5.
CIVIL_IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")
CIVIL_CLASSES = ("non-toxic", "toxic")
# Column 2 * i + y of the membership matrix: identity i with label y.
CIVIL_GROUP_NAMES = tuple(f"{identity}, {c}" for identity in CIVIL_IDENTITIES for c in CIVIL_CLASSES)
# WILDS v1.0's single CSV (text, toxicity, identity scores and the official train / val / test split).
CIVILCOMMENTS_URL = (
    "https://worksheets.codalab.org/rest/bundles/0x8cd3de0634154aeaad2ee6eb96723c6e/contents/blob/"
    "all_data_with_identities.csv"
)
CIVILCOMMENTS_FILE = Path("civilcomments") / "all_data_with_identities.csv"
MULTINLI_NAME = "nyu-mll/multi_nli"

_WORD = re.compile(r"[a-z]+")


@dataclass
class TextSplit:
    """One split of a text classification set with groups.

    Attributes:
        texts: (N,) the first text of each example (a premise, or a comment).
        pairs: (N,) the second text (a hypothesis), or None for single-text tasks.
        labels: (N,) int64 class ids.
        groups: (N,) int64 group ids, or a (N, G) bool membership matrix when groups overlap.
        group_names: one name per group.
        class_names: one name per class.
    """

    texts: list[str]
    pairs: list[str] | None
    labels: torch.Tensor
    groups: torch.Tensor
    group_names: tuple[str, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.texts)
        if self.pairs is not None and len(self.pairs) != n:
            raise ValueError(f"pairs has {len(self.pairs)} entries, texts has {n}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if len(self.groups) != n:
            raise ValueError(f"groups has {len(self.groups)} rows, texts has {n}")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "TextSplit":
        """The examples at index, in that order."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        rows = index.tolist()
        return TextSplit(
            texts=[self.texts[i] for i in rows],
            pairs=[self.pairs[i] for i in rows] if self.pairs is not None else None,
            labels=self.labels[index],
            groups=self.groups[index],
            group_names=self.group_names,
            class_names=self.class_names,
        )

    def sample(self, max_examples: int | None, seed: int = 0) -> "TextSplit":
        """A random subset of max_examples (all examples, unshuffled, when None or larger than the split)."""
        if max_examples is None or max_examples >= len(self):
            return self
        if max_examples < 1:
            raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
        order = np.random.default_rng(seed).permutation(len(self))[:max_examples]
        return self.subset(np.sort(order))


# ---------------------------------------------------------------- MultiNLI


def has_negation(text: str) -> bool:
    """True when text holds one of NEGATION_WORDS as a whole word (case-insensitive; "nobody's" counts, "know" does not)."""
    return any(word in NEGATION_WORDS for word in _WORD.findall(text.lower()))


def negation_groups(labels: Sequence[int] | torch.Tensor, hypotheses: Sequence[str]) -> torch.Tensor:
    """MultiNLI's groups: 2 * label + (the hypothesis holds a negation word); names in NLI_GROUP_NAMES.

    Args:
        labels: (N,) class ids in [0, 3).
        hypotheses: (N,) hypothesis texts.

    Returns:
        (N,) int64 group ids in [0, 6).
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(hypotheses) != len(labels):
        raise ValueError(f"hypotheses has {len(hypotheses)} entries, labels has {len(labels)}")
    checks.check_labels("labels", labels, None, len(NLI_CLASSES))
    negation = torch.tensor([has_negation(h) for h in hypotheses], dtype=torch.long)
    return group_ids(labels, negation, num_attributes=2)


def _columns(rows: Any, names: Sequence[str], what: str) -> dict[str, list]:
    # A datasets.Dataset and a dict of lists both answer rows[name] with a column.
    missing = [n for n in names if n not in (rows.column_names if hasattr(rows, "column_names") else rows)]
    if missing:
        raise ValueError(f"{what} rows lack the column(s) {missing}")
    return {n: list(rows[n]) for n in names}


def multinli_split(rows: Any) -> TextSplit:
    """MultiNLI rows in the Hugging Face layout (premise, hypothesis, label) as a TextSplit with negation groups.

    Pairs without a gold label (label -1) are dropped.

    Args:
        rows: a datasets.Dataset or a dict of equal-length lists with "premise", "hypothesis" and "label".

    Returns:
        The TextSplit; groups are 2 * label + negation.
    """
    columns = _columns(rows, ("premise", "hypothesis", "label"), "MultiNLI")
    keep = [i for i, y in enumerate(columns["label"]) if y in (0, 1, 2)]
    premises = [columns["premise"][i] for i in keep]
    hypotheses = [columns["hypothesis"][i] for i in keep]
    labels = torch.tensor([columns["label"][i] for i in keep], dtype=torch.long)
    return TextSplit(premises, hypotheses, labels, negation_groups(labels, hypotheses), NLI_GROUP_NAMES, NLI_CLASSES)


def _offline_hint() -> str:
    flags = [k for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k, "").strip() not in ("", "0")]
    return f" ({' and '.join(flags)} is set, so nothing is downloaded)" if flags else ""


def load_multinli(split: str, *, max_examples: int | None = None, seed: int = 0, cache_dir: str | Path | None = None) -> TextSplit:
    """MultiNLI through datasets.load_dataset("nyu-mll/multi_nli"), downloaded and cached by `datasets` on first use.

    MultiNLI has no labelled test split; notebook 04 uses "validation_matched" halves as validation and test.

    Args:
        split: "train" (392,702 pairs), "validation_matched" or "validation_mismatched" (about 9,800 each).
        max_examples: keep a random subset of this size (seeded); None keeps all.
        seed: seed of the subset.
        cache_dir: the `datasets` cache to use; None: its default (under HF_HOME).

    Returns:
        A TextSplit with negation groups.
    """
    splits = ("train", "validation_matched", "validation_mismatched")
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    try:
        import datasets

        rows = datasets.load_dataset(MULTINLI_NAME, split=split, cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as error:  # offline, no cache, hub unreachable: say what to do instead of a deep trace
        raise FileNotFoundError(
            f"MultiNLI could not be loaded with datasets.load_dataset({MULTINLI_NAME!r}, split={split!r}){_offline_hint()}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}. It is downloaded once into the "
            "Hugging Face cache (HF_HOME) on a machine with internet access; offline, use the stand-in "
            "(kd.data.nli_standin), which notebook 04 does in smoke mode."
        ) from error
    return multinli_split(rows).sample(max_examples, seed)


# ---------------------------------------------------------------- CivilComments


def civil_membership(rows: Any, *, threshold: float = 0.5) -> torch.Tensor:
    """CivilComments' overlapping groups: column 2 * i + y is true when the comment mentions identity i and has label y.

    Args:
        rows: a datasets.Dataset or dict of lists with "toxicity" and one column per name in CIVIL_IDENTITIES
            (scores in [0, 1]; missing scores, None or NaN, count as not mentioned).
        threshold: a score >= threshold means toxic / mentioned (WILDS uses 0.5).

    Returns:
        (N, 16) bool membership matrix; names in CIVIL_GROUP_NAMES. A row can be in several groups, or in none.
    """
    columns = _columns(rows, ("toxicity", *CIVIL_IDENTITIES), "CivilComments")
    labels = _scores(columns["toxicity"]) >= threshold
    mentions = np.stack([_scores(columns[name]) >= threshold for name in CIVIL_IDENTITIES], axis=1)  # (N, 8)
    member = np.zeros((len(labels), 2 * len(CIVIL_IDENTITIES)), dtype=bool)
    member[:, 0::2] = mentions & ~labels[:, None]
    member[:, 1::2] = mentions & labels[:, None]
    return torch.from_numpy(member)


def _scores(values: Sequence[Any]) -> np.ndarray:
    scores = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.nan_to_num(scores, nan=0.0)


def civilcomments_split(rows: Any, *, threshold: float = 0.5) -> TextSplit:
    """CivilComments rows in the WILDS layout (comment_text, toxicity, identity scores) as a TextSplit.

    Args:
        rows: a datasets.Dataset or dict of lists with "comment_text", "toxicity" and the CIVIL_IDENTITIES columns.
        threshold: toxic and mentioned mean a score >= threshold.

    Returns:
        A TextSplit whose groups are the (N, 16) membership matrix of civil_membership.
    """
    columns = _columns(rows, ("comment_text",), "CivilComments")
    labels = torch.from_numpy(_scores(list(rows["toxicity"])) >= threshold).long()
    texts = ["" if t is None else str(t) for t in columns["comment_text"]]
    return TextSplit(texts, None, labels, civil_membership(rows, threshold=threshold), CIVIL_GROUP_NAMES, CIVIL_CLASSES)


def find_civilcomments(path: str | Path | None = None) -> Path | None:
    """The WILDS CSV: path if it exists, else the first data folder holding civilcomments/all_data_with_identities.csv."""
    if path is not None:
        return Path(path) if Path(path).is_file() else None
    for folder in runtime.data_search_path():
        if (folder / CIVILCOMMENTS_FILE).is_file():
            return folder / CIVILCOMMENTS_FILE
    return None


def load_civilcomments(
    split: str,
    *,
    path: str | Path | None = None,
    download: bool = False,
    max_examples: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> TextSplit:
    """CivilComments with identity annotations (WILDS v1.0), read with datasets.load_dataset("csv", ...).

    The Hub's "google/civil_comments" has no identity columns, so the groups need WILDS' CSV: a local copy, or
    CIVILCOMMENTS_URL downloaded (and cached) by `datasets` when download=True.

    Args:
        split: "train", "val" or "test" (WILDS' official split, the CSV's "split" column).
        path: the CSV; None looks for civilcomments/all_data_with_identities.csv in the data folders.
        download: when no local CSV exists, download CIVILCOMMENTS_URL (one CSV of several hundred MB).
        max_examples: keep a random subset of this size (seeded); None keeps all.
        seed: seed of the subset.
        cache_dir: the `datasets` cache to use; None: its default (under HF_HOME).

    Returns:
        A TextSplit with the overlapping (identity, label) groups.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    found = find_civilcomments(path)
    if found is None and not download:
        where = Path(path) if path is not None else runtime.data_dir() / CIVILCOMMENTS_FILE
        raise FileNotFoundError(
            f"CivilComments (WILDS v1.0) not found at {where}. Download all_data_with_identities.csv from "
            f"{CIVILCOMMENTS_URL} (or the civilcomments_v1.0 archive at https://wilds.stanford.edu/datasets/) into "
            f"{where.parent}, set KDTEACH_DATA to a folder holding {CIVILCOMMENTS_FILE}, or pass download=True on a "
            "machine with internet access."
        )
    source = str(found) if found is not None else CIVILCOMMENTS_URL
    try:
        import datasets

        rows = datasets.load_dataset("csv", data_files=source, split="train", cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as error:
        raise FileNotFoundError(
            f"CivilComments could not be read from {source}{_offline_hint()}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    if "split" not in rows.column_names:
        raise ValueError(f"{source} has no 'split' column: is it WILDS' all_data_with_identities.csv?")
    rows = rows.filter(lambda s: s == split, input_columns="split")
    return civilcomments_split(rows).sample(max_examples, seed)


# ---------------------------------------------------------------- the offline stand-in

# The stand-in's world: a premise says what one person does; the hypothesis says what someone does.
_NAMES = ("alice", "bob", "carol", "dave")
# People no premise ever mentions: a hypothesis about one of them is neutral. Neutral is thus easy (one word tells
# it), while entailment against contradiction needs the two verbs compared across the sentences, which an early
# layer cannot do yet: the shortcut then lives exactly where the real rule is hard.
_STRANGERS = ("eve", "frank", "grace", "heidi")
_VERBS = ("runs", "sleeps", "reads", "sings")
# The shortcut: phrases holding a negation word that leave the meaning unchanged ...
_NEGATION_PHRASES = ("no doubt", "as never before", "like nobody else", "and nothing else")
# ... and phrases without one, so that a hypothesis' length says nothing about the label.
_PLAIN_PHRASES = ("for sure", "as usual", "right now", "once again")


def _standin_example(label: int, negation: bool, rng: np.random.Generator) -> tuple[str, str]:
    name, verb = rng.choice(_NAMES), rng.choice(_VERBS)
    premise = f"{name} {verb}"
    # entailment: the same person doing the same thing; contradiction: the same person doing something else;
    # neutral: a stranger (the premise says nothing about them).
    subject = rng.choice(_STRANGERS) if label == 1 else name
    if label == 2:
        verb = rng.choice([v for v in _VERBS if v != verb])
    elif label == 1:
        verb = rng.choice(_VERBS)
    phrase = rng.choice(_NEGATION_PHRASES if negation else _PLAIN_PHRASES)
    return premise, f"{subject} {verb} {phrase}"


def _standin_split(n: int, negation_rate: Sequence[float], rng: np.random.Generator) -> TextSplit:
    labels = rng.integers(len(NLI_CLASSES), size=n)
    negation = rng.random(n) < np.asarray(negation_rate)[labels]
    pairs = [_standin_example(int(y), bool(a), rng) for y, a in zip(labels, negation)]
    premises, hypotheses = [p for p, _ in pairs], [h for _, h in pairs]
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    return TextSplit(premises, hypotheses, labels_t, negation_groups(labels_t, hypotheses), NLI_GROUP_NAMES, NLI_CLASSES)


def nli_standin(
    n_train: int = 4000,
    n_val: int = 600,
    n_test: int = 1200,
    *,
    shortcut_rate: float = 0.9,
    other_rate: float = 0.05,
    seed: int = 0,
) -> dict[str, TextSplit]:
    """An offline NLI-style set with MultiNLI's negation shortcut planted in its training split.

    Premise: "<name> <verb>"; hypothesis: "<name'> <verb'> <phrase>". The label is entailment (same person, same
    verb), contradiction (same person, another verb) or neutral (a person no premise mentions, about whom the
    premise says nothing). Neutral shows in one word; entailment against contradiction needs both sentences (are
    the verbs the same?), which is the part a model has to compose across tokens.
    The shortcut: a phrase holding a negation word ("no doubt", "as never before", ...) that does not change the
    meaning. In training it comes with shortcut_rate of the contradictions and other_rate of the other pairs;
    in validation and test with half of every class, so a model that learned "negation -> contradiction" loses on
    the groups where the two disagree.

    Args:
        n_train, n_val, n_test: pairs per split (labels uniform).
        shortcut_rate: P(negation phrase | contradiction) in training.
        other_rate: P(negation phrase | entailment or neutral) in training.
        seed: the generator's seed (the same seed gives the same text).

    Returns:
        {"train", "val", "test"} -> TextSplit with MultiNLI's 6 groups.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    for name, rate in (("shortcut_rate", shortcut_rate), ("other_rate", other_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate!r}")
    rng = np.random.default_rng(seed)
    train_rates = (other_rate, other_rate, shortcut_rate)  # by label: entailment, neutral, contradiction
    return {
        "train": _standin_split(n_train, train_rates, rng),
        "val": _standin_split(n_val, (0.5, 0.5, 0.5), rng),
        "test": _standin_split(n_test, (0.5, 0.5, 0.5), rng),
    }
