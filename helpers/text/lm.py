"""Language models of the text track: token blocks, n-gram baselines, a GPT-2 and a BERT built from
``transformers`` configs, a hand-written GPT for comparison, and quiet ``transformers`` logging.

``transformers`` is imported where it is used, and its logging is changed only inside the context
managers here (:func:`quiet_transformers`, :func:`right_padding_is_safe`), never on import.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..models import tiny_gpt
from .corpora import EOS, PAD, pretraining_corpus


def fast_tokenizer(tokenizer):
    """Wrap a ``tokenizers.Tokenizer`` so ``transformers`` (pipelines, ``save_pretrained``) can use it."""
    from transformers import PreTrainedTokenizerFast

    eos, pad, mask = data.SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=eos, eos_token=eos,
                                   pad_token=pad, mask_token=mask)


@dataclass
class LMCorpus:
    """A tokenized corpus cut into next-token blocks ``[N, seq_len + 1]``, split train/val."""

    text: str
    tokenizer: Any  # tokenizers.Tokenizer
    train: torch.Tensor
    val: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def split_blocks(blocks: torch.Tensor, val_fraction: float = 0.1, group: int = 8,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``val_fraction`` of the blocks, in runs of ``group`` consecutive blocks.

    Whole runs go to validation (chosen with a fixed seed, not the experiment's), so a validation
    block's neighbours are mostly validation blocks too: the model is not scored on text whose
    immediate context it trained on, and every seed is scored on the same text.
    """
    runs = torch.arange(len(blocks)) // group
    n_runs = int(runs[-1]) + 1
    n_val = max(1, round(n_runs * val_fraction)) if n_runs > 1 else 0
    chosen = torch.randperm(n_runs, generator=torch.Generator().manual_seed(seed))[:n_val]
    is_val = torch.isin(runs, chosen)
    if not is_val.any() or is_val.all():  # too few blocks to split by runs: split blocks
        is_val = torch.zeros(len(blocks), dtype=torch.bool)
        is_val[-max(1, round(len(blocks) * val_fraction)):] = True
    return blocks[~is_val], blocks[is_val]


def lm_corpus(text_chars: int, vocab_size: int, seq_len: int) -> LMCorpus:
    """The pretraining corpus, its BPE tokenizer (trained here, cached) and train/val blocks."""
    text = pretraining_corpus(text_chars)
    tokenizer = data.train_tokenizer(text, vocab_size, name="pretrain")
    blocks = data.lm_blocks(data.encode_corpus(tokenizer, text), seq_len)
    if len(blocks) < 2:
        raise ValueError(f"text_chars={text_chars} gives only {len(blocks)} block of seq_len={seq_len}: "
                         f"raise text_chars or lower seq_len")
    return LMCorpus(text, tokenizer, *split_blocks(blocks))


def ngram_baselines(train_blocks: torch.Tensor, val_blocks: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Validation perplexity of count-based models, scored on exactly the model's targets.

    Each block predicts tokens ``1..T`` (the bigram conditions on the token before, the unigram on
    nothing), as the transformer does. Counts come from the training blocks.

    * unigram, add-one: ``p(w) = (c(w) + 1) / (N + V)``
    * bigram, add-one: ``p(w|v) = (c(v,w) + 1) / (c(v) + V)`` -- with thousands of tokens, most of
      the probability goes to pairs never seen, so it can be *worse* than the unigram;
    * bigram, Witten-Bell: ``p(w|v) = (c(v,w) + T(v) p_uni(w)) / (c(v) + T(v))`` where ``T(v)`` is
      the number of different tokens seen after ``v``: a standard, parameter-free interpolation.
    """
    V = vocab_size
    prev, nxt = train_blocks[:, :-1].reshape(-1), train_blocks[:, 1:].reshape(-1)
    unigram = torch.bincount(nxt, minlength=V).double()
    p_uni = (unigram + 1) / (unigram.sum() + V)
    pairs, pair_counts = torch.unique(prev * V + nxt, return_counts=True)
    context = torch.bincount(prev, minlength=V).double()
    followers = torch.bincount(pairs // V, minlength=V).double()  # T(v): distinct next tokens

    v_prev, v_next = val_blocks[:, :-1].reshape(-1), val_blocks[:, 1:].reshape(-1)
    key = v_prev * V + v_next
    where = torch.searchsorted(pairs, key).clamp(max=len(pairs) - 1)
    c_pair = torch.where(pairs[where] == key, pair_counts[where], 0).double()
    c_ctx, t_ctx = context[v_prev], followers[v_prev]
    add_one = (c_pair + 1) / (c_ctx + V)
    witten_bell = torch.where(c_ctx > 0, (c_pair + t_ctx * p_uni[v_next]) / (c_ctx + t_ctx).clamp(min=1),
                              p_uni[v_next])

    def ppl(p: torch.Tensor) -> float:
        return math.exp(-p.log().mean().item())

    return {"unigram (add-one)": ppl(p_uni[v_next]), "bigram (add-one)": ppl(add_one),
            "bigram (Witten-Bell)": ppl(witten_bell)}


#: ``GPT2Config`` settings that make the ``transformers`` GPT-2 train faster on a CPU and change
#: nothing it computes (:func:`helpers.text.throughput_table` measures each): no key/value cache is built during
#: training, and the tanh-approximated GELU runs as one fused kernel instead of eight small ops.
FAST_GPT: dict[str, Any] = {"use_cache": False, "activation_function": "gelu_pytorch_tanh"}


def gpt_for(vocab_size: int, seq_len: int, width: int, layers: int, heads: int,
            attn_implementation: str = "sdpa", **config: Any):
    """A ``GPT2LMHeadModel`` (via :func:`helpers.models.tiny_gpt`) with :data:`FAST_GPT` settings.

    ``width`` must be a multiple of ``heads``. Generation still uses the key/value cache.
    """
    if width % heads:
        raise ValueError(f"gpt_width={width} is not allowed with gpt_heads={heads}: the width must be "
                         f"a multiple of the number of heads")
    model = tiny_gpt(vocab_size, n_positions=seq_len, n_embd=width, n_layer=layers, n_head=heads,
                     eos_token_id=EOS, attn_implementation=attn_implementation, pad_token_id=PAD,
                     **{**FAST_GPT, **config})
    model.generation_config.use_cache = True  # the cache is off for training only
    return model


def tiny_bert(vocab_size: int, seq_len: int, width: int, layers: int, heads: int):
    """A BERT-style encoder for masked language modelling (``BertForMaskedLM``), sized like the GPT."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * width,
                        max_position_embeddings=seq_len, type_vocab_size=1, pad_token_id=PAD,
                        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(config)  # sdpa attention, the default where available


class HandGPT(nn.Module):
    """A GPT written by hand in 20 lines (pre-norm blocks, causal SDPA attention, tied embeddings).

    Same shapes and parameter count as the ``transformers`` GPT-2 of the same size: the yardstick
    for how much speed the library leaves on the table.
    """

    def __init__(self, vocab_size: int, seq_len: int, width: int, layers: int, heads: int):
        super().__init__()
        self.heads = heads
        self.wte, self.wpe = nn.Embedding(vocab_size, width), nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(width), "qkv": nn.Linear(width, 3 * width), "proj": nn.Linear(width, width),
            "ln2": nn.LayerNorm(width), "up": nn.Linear(width, 4 * width), "down": nn.Linear(4 * width, width),
        }) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        h = self.wte(ids) + self.wpe(torch.arange(t, device=ids.device))
        for blk in self.blocks:
            q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2)
                       for z in blk["qkv"](blk["ln1"](h)).chunk(3, dim=-1))
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + blk["proj"](attn.transpose(1, 2).reshape(b, t, -1))
            h = h + blk["down"](F.gelu(blk["up"](blk["ln2"](h)), approximate="tanh"))
        return self.ln_f(h) @ self.wte.weight.T


@contextlib.contextmanager
def quiet_transformers():
    """Silence ``transformers``' informational warnings (load reports) inside the block."""
    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


class _RightPaddingIsSafe(logging.Filter):
    """Drop transformers' "pass an attention_mask" warning: it does not apply to our inputs.

    Texts are right-padded and the model is causal, so a real token never attends to the padding
    after it; :class:`helpers.text.GPTClassifier` averages the real tokens only. A mask would change nothing
    but make attention take a slower path.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "attention_mask" not in record.getMessage()


@contextlib.contextmanager
def right_padding_is_safe() -> Iterator[None]:
    """Inside the block, drop ``transformers``' "pass an attention_mask" warning (see
    :class:`_RightPaddingIsSafe`); every other message still shows."""
    logger, quiet = logging.getLogger("transformers.modeling_utils"), _RightPaddingIsSafe()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
