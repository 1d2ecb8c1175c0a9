"""A byte-level BPE tokenizer trained locally, and next-token blocks of a token stream."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from ..checkpoints import cached

#: Special tokens, in id order (0, 1, 2): end of a document, padding, the MLM mask.
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|mask|>")
_TOKENIZER_VERSION = 1


def _build_tokenizer(text: str, vocab_size: int):
    """Train a byte-level BPE (GPT-2 style) on ``text``.

    Byte-level means the 256 byte values are the base alphabet, so *any* text can be encoded
    (no unknown token) and decoding gives back exactly the input. BPE then repeatedly merges the
    most frequent adjacent pair into a new token until the vocabulary has ``vocab_size`` entries.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    lines = text.splitlines(keepends=True)
    chunks = ("".join(lines[i: i + 64]) for i in range(0, len(lines), 64))
    tokenizer.train_from_iterator(chunks, trainer=trainer, length=math.ceil(len(lines) / 64))
    return tokenizer


def train_tokenizer(text: str, vocab_size: int, name: str = "general"):
    """A byte-level BPE tokenizer trained locally on ``text`` (cached by vocab size, name and text).

    ``vocab_size`` counts the 256 byte tokens and :data:`SPECIAL_TOKENS` (ids 0-2), so it must be at
    least 259; a small text may stop below it (no pair left to merge). Cached as
    ``tokenizer.json`` (kind ``"tokenizer"``) keyed by the sha256 of ``text``, and verified on load.
    Returns a :class:`tokenizers.Tokenizer`.
    """
    from tokenizers import Tokenizer

    smallest = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size!r} is not allowed: expected an int "
                         f">= {smallest} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    if not text:
        raise ValueError("train_tokenizer: text is empty")
    config = {"vocab_size": vocab_size, "name": name, "version": _TOKENIZER_VERSION,
              "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}

    def build(folder: Path) -> None:
        _build_tokenizer(text, vocab_size).save(str(folder / "tokenizer.json"))

    return Tokenizer.from_file(str(cached("tokenizer", config, build) / "tokenizer.json"))


def encode_corpus(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as one int64 tensor (what a language model trains on)."""
    return torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)


def lm_blocks(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into non-overlapping ``[N, seq_len + 1]`` blocks for next-token training.

    A block's first ``seq_len`` tokens are the input and its last ``seq_len`` the targets (shifted
    by one); consecutive blocks share their boundary token, so every token is predicted once.
    The tail that does not fill a block is dropped.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if seq_len < 1:
        raise ValueError(f"lm_blocks: seq_len={seq_len} is not allowed: expected an int >= 1")
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"lm_blocks: {len(ids)} tokens are too few for one block of seq_len={seq_len} "
                         f"(needs {seq_len + 1})")
    return ids[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()
