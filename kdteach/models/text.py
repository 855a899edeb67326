"""Text classifiers for notebook 04: a BERT or DistilBERT encoder with a head on [CLS], and named taps on every
transformer layer for early readouts.

On a GPU with internet: bert-base-uncased (teacher, 12 layers) and distilbert-base-uncased (student, 6 layers),
as in the DeDiER paper. Offline: tiny BertConfig / DistilBertConfig models built from config, the same classes
with fewer and narrower layers, trained from scratch on the stand-in.

fit() calls model(batch["x"]) with one tensor, so the inputs travel packed: x is (N, 3, L) with input ids,
attention mask and token type ids (kdteach.data.encode_text makes it). DistilBERT has no token types and
ignores the third row.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TextClassifier", "tiny_bert", "tiny_distilbert", "pretrained_text_classifier", "text_classifier", "unpack_text"]

# The checkpoints notebook 04 downloads in full mode; both use the same uncased WordPiece vocabulary, so one
# encoding of the data serves the teacher and the student.
TEACHER_CHECKPOINT = "bert-base-uncased"
STUDENT_CHECKPOINT = "distilbert-base-uncased"


def unpack_text(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits packed inputs (N, 3, L) into input ids, attention mask and token type ids, each (N, L)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be packed text of shape (N, 3, L) (ids, mask, token types), got {shape}")
    if x.is_floating_point():
        raise ValueError(f"x must hold integer token ids, got {x.dtype}")
    return x[:, 0], x[:, 1], x[:, 2]


class TextClassifier(nn.Module):
    """An encoder (BertModel or DistilBertModel) and a linear head on the last layer's [CLS] state.

    Its taps follow the MLP's and ResNets' interface: stage_names ("layer1", ..., "layerK"), features(x) and
    classifier, so an early readout can read any transformer layer.

    Args:
        encoder: a transformers BertModel or DistilBertModel (no pooler needed).
        num_classes: outputs of the head.
        dropout: dropout before the head (BERT's fine-tuning recipe uses 0.1).
        pool: how features() pools a layer's token states by default: "cls" or "mean".
        head_pool: what the head reads from the last layer: "cls" (BERT's fine-tuning recipe) or "mean" (the
            masked mean over tokens). A randomly initialised encoder's [CLS] state carries next to nothing for
            the first few hundred steps; a mean-pooled head learns from the first step, so the tiny offline models
            use it.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, dropout: float = 0.1, pool: str = "cls", head_pool: str = "cls") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        for name, value in (("pool", pool), ("head_pool", head_pool)):
            if value not in ("cls", "mean"):
                raise ValueError(f"{name} must be 'cls' or 'mean', got {value!r}")
        self.pool = pool
        self.head_pool = head_pool
        config = encoder.config
        self.encoder = encoder
        self.uses_token_types = config.model_type == "bert"  # DistilBERT has no segment embeddings
        self.hidden_size = getattr(config, "hidden_size", None) or config.dim
        num_layers = getattr(config, "num_hidden_layers", None) or config.n_layers
        self.stage_names = tuple(f"layer{i + 1}" for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.hidden_size, num_classes)

    @property
    def classifier(self) -> nn.Linear:
        """The head on the last layer's [CLS] state."""
        return self.head

    def _encode(self, x: torch.Tensor, *, all_layers: bool):
        ids, mask, types = unpack_text(x)
        kwargs = {"token_type_ids": types} if self.uses_token_types else {}
        return self.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=all_layers, return_dict=True, **kwargs)

    def features(self, x: torch.Tensor, *, upto: str | None = None, pool: str | None = None) -> dict[str, torch.Tensor]:
        """Every layer's pooled hidden state by stage name (output_hidden_states; hidden_states[0] is the embeddings).

        Args:
            x: (N, 3, L) packed text.
            upto: keep the stages up to this one (all layers still run: transformers computes them in one pass).
            pool: "cls" (the [CLS] token's state) or "mean" (the mean over the tokens the attention mask keeps);
                None uses self.pool (what an early readout, which calls features(x, upto=...), gets).

        Returns:
            {"layer1": (N, hidden), ...}.
        """
        if upto is not None and upto not in self.stage_names:
            raise ValueError(f"upto must be one of {self.stage_names}, got {upto!r}")
        pool = pool or self.pool
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        hidden = self._encode(x, all_layers=True).hidden_states[1:]
        taps = {}
        for name, h in zip(self.stage_names, hidden):
            taps[name] = _pooled(h, x[:, 1], pool)
            if name == upto:
                break
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of packed text x (N, 3, L)."""
        last = _pooled(self._encode(x, all_layers=False).last_hidden_state, x[:, 1], self.head_pool)
        return self.head(self.dropout(last))


def _pooled(hidden: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    # (N, L, H) token states -> (N, H): the [CLS] token's state, or the mean over the tokens the mask keeps.
    if pool == "cls":
        return hidden[:, 0]
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if sizes["hidden"] % sizes["heads"]:
        raise ValueError(f"hidden ({sizes['hidden']}) must be divisible by heads ({sizes['heads']})")


def tiny_bert(vocab_size: int, num_classes: int, *, hidden: int = 128, layers: int = 4, heads: int = 4, max_length: int = 64, dropout: float = 0.1, head_pool: str = "mean") -> TextClassifier:
    """A small BERT built from BertConfig with random weights: the offline teacher.

    Args:
        vocab_size: the tokenizer's vocabulary size.
        num_classes: outputs.
        hidden: width (divisible by heads); the MLP inside each layer is 4x wider, as in BERT.
        layers: transformer layers.
        heads: attention heads.
        max_length: the longest input (position embeddings).
        dropout: dropout inside the encoder and before the head.
        head_pool: what the head reads (see TextClassifier); "mean" because the model starts from random weights.

    Returns:
        A TextClassifier.
    """
    from transformers import BertConfig, BertModel

    _check_sizes(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, max_length=max_length)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max_length, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return TextClassifier(BertModel(config, add_pooling_layer=False), num_classes, dropout=dropout, head_pool=head_pool)


def tiny_distilbert(vocab_size: int, num_classes: int, *, hidden: int = 64, layers: int = 2, heads: int = 2, max_length: int = 64, dropout: float = 0.1, head_pool: str = "mean") -> TextClassifier:
    """A small DistilBERT built from DistilBertConfig with random weights: the offline student.

    Args:
        vocab_size, num_classes, hidden, layers, heads, max_length, dropout, head_pool: as in tiny_bert.

    Returns:
        A TextClassifier.
    """
    from transformers import DistilBertConfig, DistilBertModel

    _check_sizes(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, max_length=max_length)
    config = DistilBertConfig(
        vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=4 * hidden,
        max_position_embeddings=max_length, dropout=dropout, attention_dropout=dropout,
    )
    return TextClassifier(DistilBertModel(config), num_classes, dropout=dropout, head_pool=head_pool)


def pretrained_text_classifier(checkpoint: str, num_classes: int, *, dropout: float = 0.1) -> TextClassifier:
    """A pretrained encoder from the Hugging Face Hub (downloaded and cached on first use) with a fresh head.

    Args:
        checkpoint: e.g. "bert-base-uncased" (teacher) or "distilbert-base-uncased" (student).
        num_classes: outputs of the new head.
        dropout: dropout before the head.

    Returns:
        A TextClassifier.
    """
    from transformers import AutoModel

    try:
        encoder = AutoModel.from_pretrained(checkpoint)  # BERT's pooler comes along unused: the head reads [CLS]
    except OSError as error:
        raise FileNotFoundError(
            f"could not load {checkpoint!r} from the Hugging Face Hub or its cache ({error.__class__.__name__}). It is "
            "downloaded once on a machine with internet access; offline, use tiny_bert / tiny_distilbert."
        ) from error
    return TextClassifier(encoder, num_classes, dropout=dropout)


def text_classifier(name: str, *, teacher: bool, vocab_size: int, num_classes: int, size: tuple[int, int, int], max_length: int,
                    dropout: float, pool: str = "cls") -> TextClassifier:
    """Notebook 04's models by name: a Hub checkpoint (pretrained encoder, fresh head) or "tiny" (built from config).

    Args:
        name: a checkpoint such as "bert-base-uncased", or "tiny": tiny_bert for the teacher, tiny_distilbert for a
            student.
        teacher: which of the two a tiny model is.
        vocab_size, num_classes, max_length, dropout: as in tiny_bert (a Hub model keeps its own and dropout 0.1).
        size: (hidden, layers, heads) of a tiny model.
        pool: what features() pools by default, i.e. what an early readout reads: "cls" or "mean".

    Returns:
        A TextClassifier.
    """
    if name != "tiny":
        model = pretrained_text_classifier(name, num_classes)
    else:
        hidden, layers, heads = size
        build = tiny_bert if teacher else tiny_distilbert
        model = build(vocab_size, num_classes, hidden=hidden, layers=layers, heads=heads, max_length=max_length, dropout=dropout)
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
    model.pool = pool
    return model
