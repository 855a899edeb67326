"""Text for notebook 04, ready to train on: a tokenizer that works without internet, the encoding fit() batches,
TextData (splits, encodings, the groups batches are balanced over) from load_text_data, and the tables the notebook
shows about the shortcut.

The datasets themselves (MultiNLI, CivilComments, the offline stand-in, as TextSplit) live in
kdteach.data.text_datasets and are re-exported here, so kdteach.data.text.<name> keeps working.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from kdteach.data.text_datasets import (  # noqa: F401 (re-exported: kdteach.data.text.<name> keeps working)
    CIVIL_CLASSES,
    CIVIL_GROUP_NAMES,
    CIVIL_IDENTITIES,
    CIVILCOMMENTS_FILE,
    CIVILCOMMENTS_URL,
    MULTINLI_NAME,
    NEGATION_WORDS,
    NLI_CLASSES,
    NLI_GROUP_NAMES,
    TextSplit,
    civil_membership,
    civilcomments_split,
    find_civilcomments,
    has_negation,
    load_civilcomments,
    load_multinli,
    multinli_split,
    negation_groups,
    nli_standin,
)
from kdteach.groups import group_counts

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
    "load_civilcomments",
    "nli_standin",
    "standin_tokenizer",
    "encode_text",
    "TEXT_DATASETS",
    "CUES",
    "TextData",
    "load_text_data",
    "group_count_rows",
    "shortcut_rates",
    "example_rows",
    "conflicting_groups",
]


# ---------------------------------------------------------------- tokenizer and encoding

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def standin_tokenizer(texts: Sequence[str], *, vocab_size: int = 30_000):
    """A BERT-style WordPiece tokenizer whose vocabulary is the words of texts, built with `tokenizers`: no download.

    It lowercases, splits on whitespace and punctuation, and frames pairs as [CLS] a [SEP] b [SEP] with token
    type ids 0 / 1, as bert-base-uncased's tokenizer does, so the same encoding code serves both. The vocabulary
    is built here rather than learned by tokenizers' WordPiece trainer, whose sub-word merges break ties
    differently from one process to the next: the same texts always give the same ids.

    Args:
        texts: the training texts (premises and hypotheses).
        vocab_size: the most tokens (special tokens included); the most frequent words are kept, the rest map to
            [UNK].

    Returns:
        A transformers fast tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if len(texts) == 0:
        raise ValueError("texts must hold at least one text to build the vocabulary from")
    if vocab_size <= len(_SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be > {len(_SPECIAL_TOKENS)} (the special tokens), got {vocab_size}")
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - len(_SPECIAL_TOKENS)]
    vocab = {token: i for i, token in enumerate([*_SPECIAL_TOKENS, *sorted(words)])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )


def encode_text(tokenizer: Any, split: TextSplit, *, max_length: int) -> torch.Tensor:
    """Tokenizes a split into one integer tensor that fit() can batch: ids, attention mask and token types packed.

    Args:
        tokenizer: a transformers tokenizer (standin_tokenizer, or bert-base-uncased's).
        split: the texts (and pairs).
        max_length: pad or truncate every example to this many tokens.

    Returns:
        (N, 3, max_length) int64: [:, 0] input ids, [:, 1] attention mask, [:, 2] token type ids.
    """
    if max_length < 4:
        raise ValueError(f"max_length must be >= 4, got {max_length}")
    encoded = tokenizer(
        split.texts,
        split.pairs,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_token_type_ids=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return torch.stack([encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]], dim=1).long()


# ---------------------------------------------------------------- one dataset, encoded: what notebook 04 trains on

TEXT_DATASETS = ("standin", "multinli", "civilcomments")
# The spurious cue of each dataset, in words.
CUES = {"standin": "a negation word in the hypothesis", "multinli": "a negation word in the hypothesis", "civilcomments": "an identity mention"}


@dataclass
class TextData:
    """Splits, their encodings and the tokenizer.

    Attributes:
        name: the dataset (one of TEXT_DATASETS).
        splits: "train", "val", "test" -> TextSplit.
        inputs: the same keys -> (N, 3, max_length) packed token ids (encode_text).
        tokenizer: the tokenizer that made them.
        balance_groups: (N_train,) disjoint group ids the teacher's batches are balanced over, and the readout's
            diagnostics are reported on: the groups themselves on MultiNLI and the stand-in; on CivilComments,
            whose groups overlap, (any identity mentioned) x label, as in Group DRO's CivilComments setup.
        balance_names: their names.
        seed: the stand-in's generator seed, or the real data's subsampling seed.
    """

    name: str
    splits: dict[str, TextSplit]
    inputs: dict[str, torch.Tensor]
    tokenizer: Any
    balance_groups: torch.Tensor
    balance_names: tuple[str, ...]
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.splits["train"].class_names)


def _real_splits(dataset: str, sizes: Sequence[int | None], seed: int) -> dict[str, TextSplit]:
    n_train, n_val, n_test = sizes
    if dataset == "multinli":
        # MultiNLI has no labelled test split: validation_matched is cut in two halves, validation and test.
        matched = load_multinli("validation_matched")
        order = np.random.default_rng(seed).permutation(len(matched))
        half = len(order) // 2
        return {
            "train": load_multinli("train", max_examples=n_train, seed=seed),
            "val": matched.subset(np.sort(order[:half])).sample(n_val, seed),
            "test": matched.subset(np.sort(order[half:])).sample(n_test, seed),
        }
    return {
        split: load_civilcomments(name, download=True, max_examples=n, seed=seed)
        for split, name, n in (("train", "train", n_train), ("val", "val", n_val), ("test", "test", n_test))
    }


def _balance_groups(split: TextSplit) -> tuple[torch.Tensor, tuple[str, ...]]:
    if split.groups.dim() == 1:
        return split.groups, split.group_names
    any_identity = split.groups.any(dim=1).long()
    names = tuple(f"{c}, {m}" for c in split.class_names for m in ("no identity", "identity"))
    return split.labels * 2 + any_identity, names


def load_text_data(dataset: str, sizes: Sequence[int | None], *, max_length: int, tokenizer: str = "standin", seed: int = 0) -> TextData:
    """Loads (or generates) the splits, builds the tokenizer and encodes every split once.

    Args:
        dataset: one of TEXT_DATASETS.
        sizes: (train, val, test) examples; None keeps a whole split.
        max_length: tokens per example (padded or truncated).
        tokenizer: "standin" (a WordPiece vocabulary of the training words, for the tiny models) or a Hub checkpoint
            whose tokenizer to load (bert-base-uncased and distilbert-base-uncased share one).
        seed: the stand-in's generator seed and the real data's subsampling seed.

    Returns:
        TextData.
    """
    if dataset not in TEXT_DATASETS:
        raise ValueError(f"dataset must be one of {TEXT_DATASETS}, got {dataset!r}")
    splits = nli_standin(*sizes, seed=seed) if dataset == "standin" else _real_splits(dataset, sizes, seed)
    if tokenizer == "standin":
        train = splits["train"]
        encoder = standin_tokenizer(train.texts + (train.pairs or []))
    else:
        from transformers import AutoTokenizer

        try:
            encoder = AutoTokenizer.from_pretrained(tokenizer)
        except OSError as error:
            raise FileNotFoundError(f"could not load the tokenizer of {tokenizer!r} from the Hub or its cache: {error}") from error
    inputs = {name: encode_text(encoder, split, max_length=max_length) for name, split in splits.items()}
    balance, names = _balance_groups(splits["train"])
    return TextData(dataset, splits, inputs, encoder, balance, names, seed)


def group_count_rows(data: TextData) -> list[dict[str, Any]]:
    """How many examples each group has in each split (one row per group; overlapping groups counted per group)."""
    counts = {name: group_counts(split.groups, split.num_groups) for name, split in data.splits.items()}
    names = data.splits["train"].group_names
    return [{"group": g, **{split: int(c[i]) for split, c in counts.items()}} for i, g in enumerate(names)]


def shortcut_rates(split: TextSplit) -> list[dict[str, Any]]:
    """For each class: the share of its examples that carry the spurious cue (a negation word; an identity mention).

    Args:
        split: a TextSplit with disjoint (label, cue) groups or a CivilComments membership matrix.

    Returns:
        One row per class: class, n, and "with cue" (a fraction).
    """
    cue = (split.groups % 2).bool() if split.groups.dim() == 1 else split.groups.any(dim=1)  # group = 2 * label + cue
    rows = []
    for c, name in enumerate(split.class_names):
        member = split.labels == c
        n = int(member.sum())
        rows.append({"class": name, "n": n, "with cue": float(cue[member].float().mean()) if n else math.nan})
    return rows


def example_rows(split: TextSplit, *, per_group: int = 1, seed: int = 0) -> list[dict[str, str]]:
    """A few examples of each group, for showing the shortcut: rows with group, label, and the text(s)."""
    rng = np.random.default_rng(seed)
    member = split.groups if split.groups.dim() == 2 else split.groups[:, None] == torch.arange(split.num_groups)
    rows = []
    for g, name in enumerate(split.group_names):
        index = torch.nonzero(member[:, g]).flatten().numpy()
        for i in rng.permutation(index)[:per_group]:
            row = {"group": name, "label": split.class_names[int(split.labels[i])]}
            if split.pairs is not None:
                row.update(premise=split.texts[i], hypothesis=split.pairs[i])
            else:
                row["text"] = split.texts[i][:120]
            rows.append(row)
    return rows


def conflicting_groups(data: TextData) -> list[int]:
    """The balance groups where the cue points to the wrong label (the minority groups DeDiER should find).

    The cue predicts the last class (contradiction; toxic). Balance group g is label g // 2 with cue g % 2, so g
    conflicts when it has the cue and another label, or lacks the cue and has the cue's label.
    """
    cue_class = data.num_classes - 1
    return [g for g in range(len(data.balance_names)) if bool(g % 2) != (g // 2 == cue_class)]
