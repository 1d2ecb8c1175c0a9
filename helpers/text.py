"""The text track: pretrain a tiny transformer on real prose, then fine-tune it (notebooks 02 and 04).

Everything is offline and built from what every Python installation carries:

* **Corpora** -- English prose (the CPython reference topics and the standard library's docstrings)
  for pretraining, Python source for *continued* pretraining. No test example of a fine-tuning
  task is ever read, not even unlabelled: the prose corpus leaves out the docstring task's test
  docstrings, the code corpus leaves out the code task's packages (:data:`TASK_PACKAGES`) entirely
  (:func:`pretraining_corpus`, :func:`code_corpus`).
* **Language modelling** -- token blocks with a held-out split (:func:`lm_corpus`), unigram and
  bigram baselines (:func:`ngram_baselines`), a GPT-2 and a BERT built from ``transformers``
  configs, trained by the one loop :func:`helpers.train.train`, stored with ``save_pretrained``
  in a verified, atomically written folder (:func:`pretrain_gpt`, :func:`pretrain_bert`).
* **Speed** -- where ``GPT2LMHeadModel`` spends the time a hand-written GPT does not
  (:func:`throughput_table`) and the cost of a run in FLOPs (:func:`training_cost`).
* **Fine-tuning** -- classification tasks whose labels come from the text's real structure
  (which standard-library package a docstring or a function belongs to, :func:`package_task`), a
  TF-IDF baseline, and five ways to adapt the pretrained model (:data:`FT_METHODS`): scratch,
  frozen features, full fine-tuning, LoRA and (IA)^3 (:func:`finetune`, :func:`compare_methods`).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import hashlib
import json
import logging
import math
import sysconfig
import tempfile
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .config import check
from .checkpoints import (CorruptArtifact, artifact_dir, atomic_write_json, cached, save_tensors, verify,
                          writing)
from .models import count_parameters, set_trainable, tiny_gpt
from .train import IGNORE, History, evaluate, train, train_mode

__all__ = [
    "TASK_PACKAGES", "FAST_GPT", "FT_METHODS",
    "pretraining_corpus", "code_corpus", "show_tokens", "vocab_ladder", "compression_table",
    "LMCorpus", "lm_corpus", "split_blocks", "ngram_baselines",
    "fast_tokenizer", "gpt_for", "tiny_bert", "HandGPT",
    "Pretrained", "load_or_pretrain", "SampleHook", "pretrain_gpt", "pretrain_bert",
    "continue_pretraining", "reload", "mask_tokens", "fill_in", "compare_objectives", "plot_lm_curves",
    "throughput_table", "throughput_tables", "training_cost",
    "TextTask", "package_task", "encode_texts", "task_split", "check_budgets", "tfidf_accuracy",
    "check_params", "check_methods", "GPTClassifier", "classifier", "finetune", "compare_methods", "summarize_runs", "plot_methods",
]

EOS, PAD, MASK = 0, 1, 2  # the ids of data.SPECIAL_TOKENS
_VERSION = 1  # bump when anything below changes what is cached: old caches are then not used
_TASK_VERSION = 2  # the same for the fine-tuning tasks

# =================================================================================================
# 1. Corpora
# =================================================================================================

#: The fine-tuning classes: a label and the standard-library packages that make it up. Their
#: source is held out of the code corpus; of their docstrings, the test set's (see module docstring).
TASK_PACKAGES: dict[str, tuple[str, ...]] = {
    "tkinter": ("tkinter",),
    "asyncio": ("asyncio",),
    "email": ("email",),
    "importlib": ("importlib",),
    "xml": ("xml",),
    "concurrency": ("multiprocessing", "concurrent"),
    "unittest": ("unittest",),
    "web": ("http", "urllib", "wsgiref", "xmlrpc"),
}
_HELD_OUT = {pkg for pkgs in TASK_PACKAGES.values() for pkg in pkgs}


def _package_of(path: Path) -> str | None:
    """The top-level standard-library package of a source file (``None`` for a plain module)."""
    rel = path.relative_to(sysconfig.get_paths()["stdlib"])
    return rel.parts[0] if len(rel.parts) > 1 else None


def _code_files() -> list[Path]:
    return [p for p in data._stdlib_files() if _package_of(p) not in _HELD_OUT]


def pretraining_corpus(max_chars: int | None = None) -> str:
    """English prose for pretraining: :func:`helpers.data.general_corpus` minus the test docstrings.

    The reference-manual topics of ``pydoc_data`` come first, then the docstrings of the standard
    library in :func:`helpers.data.general_corpus`'s order -- except the docstrings of the
    fine-tuning task's *test set* (:func:`package_task`, :func:`task_split`): the model may read
    the task's domain, as any large pretraining corpus would, but never a text it is tested on.
    Deterministic, cut at a line.
    """
    from pydoc_data.topics import topics

    task = package_task("docstring")
    held_out = {task.texts[i] for i in task_split(task)[1].tolist()}

    def pieces():
        for key in sorted(topics):
            yield topics[key].strip()
        for path in data._stdlib_files():
            source = data._read_source(path)
            if source:
                yield from (d for d in data._docstrings(source) if d not in held_out)

    return data._join_until(pieces(), max_chars)


def code_corpus(max_chars: int | None = None) -> str:
    """Python source for continued pretraining: the standard library minus the task's packages.

    The code task (:func:`package_task` with ``kind="code"``) asks which package a function comes
    from; whole packages are held out here, so no function of the task is ever read.
    """
    def pieces():
        for path in _code_files():
            source = data._read_source(path)
            if source and source.strip():
                yield source.strip()

    return data._join_until(pieces(), max_chars)


# =================================================================================================
# 2. Tokens
# =================================================================================================

def show_tokens(tokenizer, text: str) -> str:
    """``text`` with ``|`` between its tokens: see where BPE cuts words (``·`` is a space)."""
    return "|".join(tokenizer.decode([i]).replace(" ", "·").replace("\n", "⏎")
                    for i in tokenizer.encode(text).ids)


def vocab_ladder(vocab_size: int) -> list[int]:
    """A few vocabulary sizes around ``vocab_size``, from bytes only (259) to 4x larger."""
    sizes = {259, vocab_size // 4, vocab_size // 2, vocab_size, vocab_size * 2, vocab_size * 4}
    return sorted(s for s in sizes if 259 <= s <= 65_536)


def compression_table(text: str, vocab_sizes: Sequence[int], name: str = "pretrain") -> list[dict]:
    """Characters per token for byte-level BPE tokenizers of several vocabulary sizes on ``text``.

    A bigger vocabulary merges more: fewer tokens per text (shorter sequences, cheaper attention)
    but a bigger embedding matrix and rarer tokens, each seen less often in training.
    """
    rows = []
    for size in vocab_sizes:
        tokenizer = data.train_tokenizer(text, size, name=name)
        n = len(tokenizer.encode(text).ids)
        rows.append({"vocab_size": tokenizer.get_vocab_size(), "tokens": n, "chars_per_token": len(text) / n})
    return rows


def fast_tokenizer(tokenizer):
    """Wrap a ``tokenizers.Tokenizer`` so ``transformers`` (pipelines, ``save_pretrained``) can use it."""
    from transformers import PreTrainedTokenizerFast

    eos, pad, mask = data.SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=eos, eos_token=eos,
                                   pad_token=pad, mask_token=mask)


# =================================================================================================
# 3. Language-model data and n-gram baselines
# =================================================================================================

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


# =================================================================================================
# 4. Models
# =================================================================================================

#: ``GPT2Config`` settings that make the ``transformers`` GPT-2 train faster on a CPU and change
#: nothing it computes (:func:`throughput_table` measures each): no key/value cache is built during
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


def check_params(P: Mapping[str, Any]) -> None:
    """Fail before any training on knob values that are each valid but do not fit together."""
    if P["gpt_width"] % P["gpt_heads"]:
        raise ValueError(f"parameter 'gpt_width'={P['gpt_width']} is not allowed with gpt_heads={P['gpt_heads']}: "
                         f"the width must be a multiple of the number of heads")
    if "task_len" in P and P["task_len"] > P["seq_len"]:
        raise ValueError(f"parameter 'task_len'={P['task_len']} is not allowed: the pretrained model reads at "
                         f"most seq_len={P['seq_len']} tokens")
    if "text_methods" in P:
        check_methods(P["text_methods"])


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


# =================================================================================================
# 5. Pretraining, stored with save_pretrained (verified, atomic)
# =================================================================================================

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


@dataclass
class Pretrained:
    """A pretrained model, its tokenizer (``transformers`` form), its folder and what it cost."""

    model: Any
    tokenizer: Any  # PreTrainedTokenizerFast
    folder: Path
    summary: dict[str, Any]
    trained: bool  # True: trained in this run; False: loaded from its verified folder

    def history(self):
        return History.from_dict(self.summary["history"]).frame()

    @property
    def config_key(self) -> dict[str, Any]:
        return self.summary["config"]


def load_or_pretrain(kind: str, config: Mapping[str, Any], build: Callable[[], Any],
                     train_fn: Callable[[Any], Mapping[str, Any]], tokenizer) -> Pretrained:
    """:func:`helpers.checkpoints.load_or_train` for ``transformers`` models, via ``save_pretrained``.

    The folder (named by the hash of ``config``) holds what ``from_pretrained`` and
    ``pipeline(...)`` read -- ``config.json``, ``model.safetensors``, the tokenizer files -- plus
    ``summary.json`` (history and cost) and a manifest of sha256 sums. It is written to a temporary
    folder renamed into place when complete; a folder that fails verification is retrained.
    """
    try:
        folder = verify(kind, config)
    except FileNotFoundError:
        folder = None
    except CorruptArtifact as err:
        warnings.warn(f"retraining {kind}: {err}", stacklevel=2)
        folder = None
    if folder is not None:
        model = reload(folder, type(build()))
        summary = json.loads((folder / "summary.json").read_text())
        return Pretrained(model, tokenizer, folder, summary, trained=False)

    model = build()
    summary = {"config": dict(config), **train_fn(model)}
    model.cpu()
    with writing(kind, config) as staging, quiet_transformers():
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "summary.json", summary)
    return Pretrained(model, tokenizer, artifact_dir(kind, config), summary, trained=True)


def reload(folder: str | Path, model_class=None):
    """``from_pretrained`` from a local folder (default class: the one named in its config)."""
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class  # noqa: N813
    with quiet_transformers():
        model = model_class.from_pretrained(str(folder), attn_implementation="sdpa")
    return model.eval()


class SampleHook:
    """An ``on_epoch_end`` hook: continue a few prompts after each epoch and keep the text.

    Sampling (top-k, temperature) uses its own seeded random generator, so it does not change the
    training's random stream, and the same seed gives the same samples.
    """

    def __init__(self, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, seed: int = 0):
        self.tokenizer, self.prompts = tokenizer, list(prompts)
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.samples: list[dict[str, Any]] = []

    def __call__(self, epoch: int, model: nn.Module, row: dict[str, Any]) -> None:
        for prompt in self.prompts:
            self.samples.append({"epoch": epoch, "prompt": prompt,
                                 "continuation": generate(model, self.tokenizer, prompt,
                                                          self.max_new_tokens, self.seed)})
        train_mode(model)


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 24, seed: int = 0,
             top_k: int = 20, temperature: float = 0.8) -> str:
    """A sampled continuation of ``prompt`` (only the new text)."""
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt)], device=device)
    room = model.config.n_positions - ids.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=top_k,
                             temperature=temperature, max_new_tokens=max(1, min(max_new_tokens, room)),
                             pad_token_id=PAD)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


SAMPLE_PROMPTS = ("The list", "An exception is raised when")

#: The pretraining recipe of GPT-style models (as in GPT-3 and nanoGPT): AdamW with beta2 = 0.95
#: (the second-moment estimate adapts faster, which keeps short, high-learning-rate runs stable)
#: and a linear warm-up over the first 10% of the steps, then a cosine decay to zero.
LM_BETAS, LM_WARMUP = (0.9, 0.95), 0.10


def lm_recipe(model: nn.Module, lr: float, weight_decay: float, steps: int) -> dict[str, Any]:
    """``train`` keywords for language-model pretraining: :data:`LM_BETAS` param groups and warm-up."""
    from .train import default_param_groups

    groups = [dict(g, betas=LM_BETAS) for g in default_param_groups(model, lr, weight_decay)]
    return {"lr": lr, "weight_decay": weight_decay, "param_groups": groups,
            "warmup_steps": max(1, round(LM_WARMUP * steps))}


def _gpt_key(P: Mapping[str, Any], corpus: LMCorpus) -> dict[str, Any]:
    return {"version": _VERSION, "betas": LM_BETAS, "warmup": LM_WARMUP, "corpus_sha256": corpus.sha256,
            "vocab_size": corpus.vocab_size,
            "seq_len": P["seq_len"], "width": P["gpt_width"], "layers": P["gpt_layers"],
            "heads": P["gpt_heads"], "epochs": P["lm_epochs"], "batch_size": P["text_batch_size"],
            "lr": P["lm_lr"], "weight_decay": P["weight_decay"], "seed": P["seed"], "bf16": P["text_bf16"]}


def pretrain_gpt(P: Mapping[str, Any], device: torch.device | str = "cpu", corpus: LMCorpus | None = None,
                 progress: bool = True) -> Pretrained:
    """The profile's GPT-2, pretrained on next-token prediction -- loaded if it was trained before.

    Architecture and training come from the profile: ``gpt_width``/``gpt_layers``/``gpt_heads``,
    ``seq_len``, ``lm_epochs``, ``text_batch_size``, ``lm_lr`` (:func:`lm_recipe`),
    ``weight_decay``, ``bf16``, ``seed``; the data from ``text_chars`` and ``vocab_size``.
    """
    corpus = corpus or lm_corpus(P["text_chars"], P["vocab_size"], P["seq_len"])
    tokenizer = fast_tokenizer(corpus.tokenizer)
    config = _gpt_key(P, corpus)

    def build():
        torch.manual_seed(P["seed"])
        return gpt_for(corpus.vocab_size, P["seq_len"], P["gpt_width"], P["gpt_layers"], P["gpt_heads"])

    def train_fn(model) -> dict[str, Any]:
        hook = SampleHook(tokenizer, SAMPLE_PROMPTS, seed=P["seed"])
        steps = P["lm_epochs"] * math.ceil(len(corpus.train) / P["text_batch_size"])
        history = train(model, corpus.train, corpus.val, task="lm", epochs=P["lm_epochs"],
                        batch_size=P["text_batch_size"], bf16=P["text_bf16"], device=device, seed=P["seed"],
                        on_epoch_end=[hook], progress=progress, desc="pretrain GPT",
                        **lm_recipe(model, P["lm_lr"], P["weight_decay"], steps))
        return {"history": history.to_dict(), "samples": hook.samples, **_cost(model, history, device, P)}

    return load_or_pretrain("gpt-pretrain", config, build, train_fn, tokenizer)


def _cost(model: nn.Module, history: History, device, P: Mapping[str, Any]) -> dict[str, Any]:
    tokens = history.examples_seen
    params = count_parameters(model)
    return {"params": params, "tokens_seen": tokens, "wall_time": history.wall_time,
            "tokens_per_s": tokens / history.wall_time, "flops": 6 * params * tokens,
            "device": str(device), "threads": torch.get_num_threads(), "bf16": bool(P["text_bf16"])}


def training_cost(summary: Mapping[str, Any], peak_gflops: Mapping[str, float]) -> dict[str, float]:
    """Tokens/s, wall time, FLOPs (6 x parameters x tokens) and model FLOPs utilisation (MFU).

    MFU is the achieved FLOP/s over the machine's matmul peak in the precision used (fp32 or bf16,
    :func:`helpers.bench.matmul_peak`). 6 x N x tokens counts the matrix products of forward (2)
    and backward (4); it leaves out attention's own ``T x T`` products and every elementwise op,
    which is one reason small models reach a small MFU.
    """
    peak = peak_gflops["bf16" if summary["bf16"] else "fp32"]
    achieved = summary["flops"] / summary["wall_time"] / 1e9
    return {"parameters": summary["params"], "tokens trained": summary["tokens_seen"],
            "wall time (s)": summary["wall_time"], "tokens/s": summary["tokens_per_s"],
            "training FLOPs": summary["flops"], "achieved GFLOP/s": achieved,
            "matmul peak GFLOP/s": peak, "MFU": achieved / peak}


def mask_tokens(blocks: torch.Tensor, vocab_size: int, rate: float = 0.15,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: pick ``rate`` of the tokens to predict; the input shows ``<|mask|>`` at 80%
    of them, a random token at 10% and the true token at 10% (so the model cannot rely on the mask
    symbol to know where to predict). Returns ``(inputs, labels)``; labels are ``IGNORE`` where
    nothing is predicted. The masks are drawn once (static masking), from ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.rand(blocks.shape, generator=gen) < rate
    labels = torch.where(chosen, blocks, IGNORE)
    roll = torch.rand(blocks.shape, generator=gen)
    inputs = blocks.clone()
    inputs[chosen & (roll < 0.8)] = MASK
    random_slots = chosen & (roll >= 0.8) & (roll < 0.9)
    first = len(data.SPECIAL_TOKENS)  # never insert a special token at random
    inputs[random_slots] = torch.randint(first, vocab_size, (int(random_slots.sum()),), generator=gen)
    return inputs, labels


def pretrain_bert(P: Mapping[str, Any], device: torch.device | str = "cpu", corpus: LMCorpus | None = None,
                  progress: bool = True) -> Pretrained:
    """A BERT-style encoder pretrained by masked language modelling on the same blocks as the GPT.

    Same width, depth, heads, batch, learning rate and text; ``mlm_epochs`` passes, each with its
    own draw of masks (so a token is predicted in a different context every pass).
    """
    corpus = corpus or lm_corpus(P["text_chars"], P["vocab_size"], P["seq_len"])
    tokenizer = fast_tokenizer(corpus.tokenizer)
    config = {**_gpt_key(P, corpus), "objective": "mlm", "epochs": P["mlm_epochs"], "mask_rate": 0.15}
    blocks, val_blocks = corpus.train[:, :-1], corpus.val[:, :-1]
    val = mask_tokens(val_blocks, corpus.vocab_size, seed=12345)  # the same masks for every run

    def build():
        torch.manual_seed(P["seed"])
        return tiny_bert(corpus.vocab_size, P["seq_len"], P["gpt_width"], P["gpt_layers"], P["gpt_heads"])

    def train_fn(model) -> dict[str, Any]:
        epochs = P["mlm_epochs"]
        masked = [mask_tokens(blocks, corpus.vocab_size, seed=P["seed"] * 1000 + e) for e in range(epochs)]
        train_data = (torch.cat([m[0] for m in masked]), torch.cat([m[1] for m in masked]))
        steps = math.ceil(len(train_data[0]) / P["text_batch_size"])
        history = train(model, train_data, val, task="classify", epochs=1, batch_size=P["text_batch_size"],
                        bf16=P["text_bf16"], device=device, seed=P["seed"], monitor="val_loss", progress=progress,
                        desc="pretrain BERT (MLM)", **lm_recipe(model, P["lm_lr"], P["weight_decay"], steps))
        cost = _cost(model, history, device, P)
        cost["tokens_seen"] = blocks.numel() * epochs  # tokens read; examples_seen counts predictions
        cost["tokens_per_s"] = cost["tokens_seen"] / history.wall_time
        cost["flops"] = 6 * cost["params"] * cost["tokens_seen"]
        return {"history": history.to_dict(), "predicted_tokens": history.examples_seen, **cost}

    return load_or_pretrain("bert-pretrain", config, build, train_fn, tokenizer)


@torch.no_grad()
def fill_in(sentence: str, word: str, gpt, bert, tokenizer, k: int = 5) -> dict[str, str]:
    """Hide ``word`` in ``sentence`` and let each model guess it (its first token, if it has several).

    The GPT sees only the words *before* the gap (it predicts the next token); BERT sees the
    sentence on both sides of a ``<|mask|>``. Returns their top-``k`` guesses.
    """
    where = sentence.find(" " + word)
    if where < 0:
        raise ValueError(f"fill_in: {word!r} (with a space before it) is not in {sentence!r}")
    ids = tokenizer.encode(sentence)
    at = len(tokenizer.encode(sentence[:where]))  # byte-level BPE never merges across " word"
    answer = tokenizer.decode([ids[at]])
    room = min(gpt.config.n_positions, bert.config.max_position_embeddings)
    start = max(0, min(at - room // 2, len(ids) - room))  # a window the models can read
    ids, at = ids[start:start + room], at - start
    gpt_logits = gpt.eval()(torch.tensor([ids[:at]])).logits[0, -1]
    masked = list(ids)
    masked[at] = MASK
    bert_logits = bert.eval()(torch.tensor([masked])).logits[0, at]

    def top(logits: torch.Tensor) -> str:
        return "  ".join(repr(tokenizer.decode([i])) for i in logits.topk(k).indices.tolist())

    return {"sentence": sentence[:where] + " ___" + sentence[where + 1 + len(word):],
            "answer": repr(answer), "GPT (left context only)": top(gpt_logits),
            "BERT (both sides)": top(bert_logits)}


def compare_objectives(gpt: Pretrained, bert: Pretrained, unigram_ppl: float | None = None) -> list[dict[str, Any]]:
    """Next-token vs masked-token pretraining after the same number of passes over the text.

    The GPT row is read from its history at BERT's number of passes (or its last epoch). With
    ``unigram_ppl`` a reference row shows the loss of counting tokens (``ln`` of its perplexity):
    a model near it has learned little more than which tokens are frequent.
    """
    bert_history = History.from_dict(bert.summary["history"])
    passes = bert.config_key["epochs"]
    gpt_rows = gpt.summary["history"]["rows"]
    at = gpt_rows[min(passes, len(gpt_rows)) - 1]
    seq_len = gpt.config_key["seq_len"]
    gpt_seconds = sum(r["seconds"] for r in gpt_rows[:min(passes, len(gpt_rows))])
    gpt_tokens = gpt.summary["tokens_seen"] * min(passes, len(gpt_rows)) / len(gpt_rows)
    rows = [
        {"objective": "next token (GPT-2)", "passes": at["epoch"], "sees": "tokens before",
         "predicted per block": seq_len, "val loss": at["val_loss"], "val accuracy": at["val_acc"],
         "tokens read/s": gpt_tokens / gpt_seconds, "predictions/s": gpt_tokens / gpt_seconds},
        {"objective": "masked token (BERT)", "passes": passes, "sees": "both sides",
         "predicted per block": round(0.15 * seq_len, 1), "val loss": bert_history.last("val_loss"),
         "val accuracy": bert_history.last("val_acc"), "tokens read/s": bert.summary["tokens_per_s"],
         "predictions/s": bert.summary["predicted_tokens"] / bert.summary["wall_time"]},
    ]
    if unigram_ppl is not None:
        rows.append({"objective": "unigram counts (reference)", "sees": "nothing", "val loss": math.log(unigram_ppl)})
    return rows


def plot_lm_curves(history, baselines: Mapping[str, float]):
    """Loss and perplexity per epoch (train and validation), with the n-gram baselines for scale."""
    import matplotlib.pyplot as plt

    from .plots import curves

    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.4))
    curves(history, ["train_loss", "val_loss"], title="next-token loss", ylabel="cross-entropy (nats)", ax=ax_loss)
    curves(history, ["train_ppl", "val_ppl"], title="perplexity vs n-gram baselines", ax=ax_ppl)
    for (name, value), style in zip(baselines.items(), (":", "--", "-.")):
        ax_ppl.axhline(value, color="gray", linestyle=style, label=name)
    ax_ppl.set_yscale("log")
    ax_ppl.legend(fontsize=7)
    fig.tight_layout()
    return fig


def continue_pretraining(P: Mapping[str, Any], base: Pretrained, device: torch.device | str = "cpu",
                         progress: bool = True) -> tuple[Pretrained, LMCorpus]:
    """Domain-adaptive (continued) pretraining: more next-token training, now on Python source.

    Starts from ``base`` and reads ``dapt_chars`` characters of :func:`code_corpus` once, at a
    third of the pretraining learning rate (the model already knows English; we adapt, not restart).
    Returns the adapted model and the code corpus (tokenized with the *same* tokenizer) with its
    own validation blocks.
    """
    text = code_corpus(P["dapt_chars"])
    tokenizer = base.tokenizer.backend_tokenizer
    blocks = data.lm_blocks(data.encode_corpus(tokenizer, text), P["seq_len"])
    code = LMCorpus(text, tokenizer, *split_blocks(blocks))
    config = {"base": base.config_key, "code_sha256": code.sha256, "epochs": 1, "lr": P["lm_lr"] / 3,
              "batch_size": P["text_batch_size"]}

    def build():
        return copy.deepcopy(base.model)

    def train_fn(model) -> dict[str, Any]:
        steps = math.ceil(len(code.train) / P["text_batch_size"])
        history = train(model, code.train, code.val, task="lm", epochs=1, batch_size=P["text_batch_size"],
                        bf16=P["text_bf16"], device=device, seed=P["seed"], progress=progress,
                        desc="continued pretraining (code)", **lm_recipe(model, P["lm_lr"] / 3, P["weight_decay"], steps))
        return {"history": history.to_dict(), **_cost(model, history, device, P)}

    return load_or_pretrain("gpt-continued", config, build, train_fn, base.tokenizer), code


# =================================================================================================
# 6. Where the time goes: transformers' GPT-2 vs a hand-written GPT
# =================================================================================================

def _lm_step(model: nn.Module, bf16: bool, loss_in_model: bool = False) -> Callable[[torch.Tensor], None]:
    """One bare training step (AdamW) on a token block batch, for timing the model alone."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if loss_in_model:  # transformers shifts the labels itself (a copy of the logits)
                loss = model(batch[:, :-1], labels=batch[:, :-1]).loss
            else:
                out = model(batch[:, :-1])
                logits = out.logits if hasattr(out, "logits") else out
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def throughput_table(vocab_size: int, seq_len: int, width: int, layers: int, heads: int,
                     batch_size: int, steps: int, rounds: int = 3,
                     peak_gflops: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Training tokens/s of the ``transformers`` GPT-2 as each fix is added, next to a hand-written GPT.

    Every variant has the same shapes and (within a few biases) parameters and trains the same
    batches with a bare AdamW step on the CPU. The variants are timed in turns, ``rounds`` times
    ``steps`` steps each, and each keeps its best turn: other load on a shared machine slows all of
    them, and the best turn is the closest to what the code itself costs. Read the ratios, not the
    absolute numbers.
    """
    def gpt(attn: str, **config: Any):
        torch.manual_seed(0)
        return tiny_gpt(vocab_size, n_positions=seq_len, n_embd=width, n_layer=layers, n_head=heads,
                        attn_implementation=attn, **config)

    fused = {"activation_function": "gelu_pytorch_tanh"}
    variants = [  # (name, model, bf16, loss computed by the model)
        ("GPT2LMHeadModel, eager attention", lambda: gpt("eager"), False, False),
        ("+ sdpa attention", lambda: gpt("sdpa"), False, False),
        ("+ use_cache=False", lambda: gpt("sdpa", use_cache=False), False, False),
        ("+ fused GELU (gelu_pytorch_tanh)", lambda: gpt("sdpa", use_cache=False, **fused), False, False),
        ("  loss inside the model (labels=...)", lambda: gpt("sdpa", use_cache=False, **fused), False, True),
        ("+ bf16 autocast", lambda: gpt("sdpa", use_cache=False, **fused), True, False),
        ("hand-written GPT, SDPA, fp32", lambda: HandGPT(vocab_size, seq_len, width, layers, heads), False, False),
        ("hand-written GPT, SDPA, bf16", lambda: HandGPT(vocab_size, seq_len, width, layers, heads), True, False),
    ]
    gen = torch.Generator().manual_seed(0)
    batches = torch.randint(len(data.SPECIAL_TOKENS), vocab_size, (steps + 1, batch_size, seq_len + 1), generator=gen)
    runs = []
    with quiet_transformers():
        for name, make, bf16, inside in variants:
            model = make()
            step = _lm_step(model, bf16, inside)
            step(batches[-1])  # warm-up: allocator, kernels, lazy initialisation
            runs.append((name, model, step, bf16))
        best = {name: math.inf for name, *_ in runs}
        for _ in range(rounds):
            for name, _, step, _ in runs:
                start = time.perf_counter()
                for batch in batches[:steps]:
                    step(batch)
                best[name] = min(best[name], time.perf_counter() - start)
    tokens = steps * batch_size * seq_len
    reference = tokens / best["hand-written GPT, SDPA, fp32"]
    rows = []
    for name, model, _, bf16 in runs:
        per_s = tokens / best[name]
        row = {"variant": name, "precision": "bf16" if bf16 else "fp32", "params": count_parameters(model),
               "tokens/s": per_s, "vs hand-written fp32": per_s / reference}
        if peak_gflops:
            row["MFU"] = 6 * row["params"] * per_s / (peak_gflops["bf16" if bf16 else "fp32"] * 1e9)
        rows.append(row)
    return rows


def throughput_tables(shapes: Mapping[str, tuple[int, int, int]], vocab_size: int, seq_len: int,
                      batch_size: int, steps: int, rounds: int = 3,
                      peak_gflops: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """:func:`throughput_table` for several model shapes ``{name: (width, layers, heads)}``."""
    rows = []
    for name, (width, layers, heads) in shapes.items():
        for row in throughput_table(vocab_size, seq_len, width, layers, heads, batch_size, steps, rounds, peak_gflops):
            rows.append({"model": name, **row})
    return rows


# =================================================================================================
# 7. Fine-tuning tasks with labels from the text's real structure
# =================================================================================================

@dataclass
class TextTask:
    """A text classification task: ``texts[i]`` belongs to class ``classes[labels[i]]``."""

    kind: str
    texts: list[str]
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def examples(self, per_class: int = 1, chars: int = 110) -> list[dict[str, str]]:
        """The first ``per_class`` examples of each class, shortened, for a look at the task."""
        rows = []
        for c, name in enumerate(self.classes):
            idx = torch.nonzero(self.labels == c).flatten()[:per_class]
            rows += [{"class": name, "text": textwrap.shorten(self.texts[i], chars)} for i in idx.tolist()]
        return rows


TASK_KINDS = ("docstring", "code")
MAX_PER_CLASS = 200   # examples kept per class (balanced task; the largest class is capped)
TEST_PER_CLASS = 40   # held out per class for testing


def _function_without_docstring(lines: list[str], node: ast.AST) -> str | None:
    """The source of one function (decorators included, dedented), its docstring cut out."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])  # type: ignore[attr-defined]
    body = node.body  # type: ignore[attr-defined]
    keep = list(range(first - 1, node.end_lineno))  # type: ignore[attr-defined]
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = range(body[0].lineno - 1, body[0].end_lineno)
        keep = [i for i in keep if i not in doc]
    code = textwrap.dedent("".join(lines[i] for i in keep)).strip()
    return code if code.count("\n") >= 2 else None  # at least three lines: a real body


def _examples_of(source: str, kind: str) -> list[str]:
    if kind == "docstring":
        return data._docstrings(source)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    funcs = (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return [code for code in (_function_without_docstring(lines, f) for f in funcs) if code]


def package_task(kind: str = "docstring") -> TextTask:
    """Which standard-library package family (:data:`TASK_PACKAGES`) does a text come from?

    ``kind="docstring"``: a docstring (English prose, the general domain).
    ``kind="code"``: the source of a function with its docstring removed (the specialist domain).
    Labels come from where the text really lives, not from a person. Exact duplicates are dropped
    (so train and test cannot share a text), and each class keeps at most :data:`MAX_PER_CLASS`
    examples, chosen by a fixed hash order. Built once and cached.
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"package_task: kind={kind!r} is not allowed: expected one of {TASK_KINDS}")
    owner = {pkg: label for label, pkgs in TASK_PACKAGES.items() for pkg in pkgs}
    classes = list(TASK_PACKAGES)
    files = [p for p in data._stdlib_files() if _package_of(p) in owner]
    config = {"kind": kind, "version": _TASK_VERSION, "classes": TASK_PACKAGES, "max_per_class": MAX_PER_CLASS,
              "files": hashlib.sha256("".join(p.as_posix() for p in files).encode()).hexdigest()}

    def build(folder: Path) -> None:
        seen: dict[str, str | None] = {}
        for path in files:
            source = data._read_source(path)
            for text in _examples_of(source, kind) if source else []:
                label = owner[_package_of(path)]
                seen[text] = label if seen.get(text, label) == label else None  # ambiguous: drop
        by_class: dict[str, list[str]] = {c: [] for c in classes}
        for text, label in seen.items():
            if label is not None:
                by_class[label].append(text)
        rows = []
        for label in classes:
            texts = sorted(by_class[label], key=lambda t: hashlib.sha256(t.encode()).hexdigest())
            rows += [[t, classes.index(label)] for t in texts[:MAX_PER_CLASS]]
        atomic_write_json(folder / "task.json", rows)

    rows = json.loads((cached(f"text-task-{kind}", config, build, verbose=False) / "task.json").read_text())
    return TextTask(kind, [r[0] for r in rows], torch.tensor([r[1] for r in rows]), classes)


def encode_texts(tokenizer, texts: Sequence[str], length: int) -> torch.Tensor:
    """Token ids ``[N, length]``: each text cut to ``length`` tokens, right-padded with ``<|pad|>``.

    Right padding needs no attention mask in a causal model: a real token only attends to tokens
    on its left, so the padding after it can never change it (:class:`GPTClassifier` then
    averages the real tokens only).
    """
    tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
    out = torch.full((len(texts), length), PAD, dtype=torch.long)
    for i, encoding in enumerate(tokenizer.encode_batch(list(texts))):
        ids = encoding.ids[:length] or [EOS]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def task_split(task: TextTask, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pool, test)`` indices: :data:`TEST_PER_CLASS` test examples per class, the rest is the pool
    that label budgets draw from. The test set is fixed (seed 0 by default) for every experiment."""
    counts = torch.bincount(task.labels).tolist()
    fraction = TEST_PER_CLASS / min(counts)
    if fraction >= 1:
        raise ValueError(f"the smallest class has only {min(counts)} examples; {TEST_PER_CLASS} are "
                         f"needed for testing")
    gen = torch.Generator().manual_seed(seed)
    pool, test = [], []
    for c in range(len(task.classes)):
        members = torch.nonzero(task.labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        test.append(members[:TEST_PER_CLASS])
        pool.append(members[TEST_PER_CLASS:])
    return torch.sort(torch.cat(pool)).values, torch.sort(torch.cat(test)).values


def check_budgets(budgets: Sequence[int], task: TextTask, pool: torch.Tensor) -> None:
    """Fail before any training if a label budget asks for more examples than a class has."""
    available = torch.bincount(task.labels[pool], minlength=len(task.classes))
    smallest = int(available.min())
    too_big = [b for b in budgets if b > smallest]
    if too_big:
        name = task.classes[int(available.argmin())]
        raise ValueError(f"parameter 'label_budgets'={list(budgets)} is not allowed: {too_big} labels per "
                         f"class is more than the {task.kind} task has (class {name!r} has {smallest} "
                         f"training examples), so the maximum allowed budget is {smallest}")


def tfidf_accuracy(task: TextTask, train_idx: torch.Tensor, test_idx: torch.Tensor) -> float:
    """A strong classical baseline: TF-IDF of words and word pairs + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    x_train = vectorizer.fit_transform([task.texts[i] for i in train_idx.tolist()])
    x_test = vectorizer.transform([task.texts[i] for i in test_idx.tolist()])
    classifier = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, task.labels[train_idx].numpy())
    return float((classifier.predict(x_test) == task.labels[test_idx].numpy()).mean())


# =================================================================================================
# 8. Fine-tuning methods
# =================================================================================================

#: The ways to adapt a pretrained model, cheapest first in what they store:
FT_METHODS = ("scratch", "frozen", "full", "lora", "ia3")
_ABOUT = {
    "scratch": "same architecture, random weights, all trained",
    "frozen": "pretrained features fixed (computed once); a linear head trained on them",
    "full": "pretrained weights, new head, all trained",
    "lora": "pretrained weights frozen; low-rank updates of token embeddings and attention + head",
    "ia3": "pretrained weights frozen; learned rescaling of keys, values and MLP inputs + head",
}
#: Learning rate of each method relative to ``ft_lr``: fewer trainable parameters tolerate (and
#: need) larger steps -- LoRA's product of two small matrices, (IA)^3's scaling vectors and a
#: linear head on fixed features all move slowly at a full fine-tuning learning rate.
LR_FACTOR = {"scratch": 1.0, "frozen": 10.0, "full": 1.0, "lora": 10.0, "ia3": 20.0}


def check_methods(methods: Sequence[str]) -> list[str]:
    """Fail early, naming the knob ``text_methods`` and the allowed values, on an unknown method."""
    return check("text_methods", list(methods))


class _RightPaddingIsSafe(logging.Filter):
    """Drop transformers' "pass an attention_mask" warning: it does not apply to our inputs.

    Texts are right-padded and the model is causal, so a real token never attends to the padding
    after it; :class:`GPTClassifier` averages the real tokens only. A mask would change nothing
    but make attention take a slower path.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "attention_mask" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_RightPaddingIsSafe())


class GPTClassifier(nn.Module):
    """A pretrained GPT body (``transformer``: a ``GPT2Model``) + mean pooling + a linear ``head``.

    The text is summarised by the average of the last layer's hidden states over its real tokens
    (the padding after the text is ignored), then one linear layer gives the class scores. On
    this small a model, averaging every token works much better than reading only the last one
    (what ``GPT2ForSequenceClassification`` does).
    """

    def __init__(self, transformer: nn.Module, num_classes: int):
        super().__init__()
        self.transformer = transformer
        self.head = nn.Linear(transformer.config.n_embd, num_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(ids).last_hidden_state
        real = (ids != PAD).unsqueeze(-1).to(hidden.dtype)
        return (hidden * real).sum(1) / real.sum(1).clamp(min=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


def classifier(base: Pretrained, num_classes: int, pretrained: bool = True) -> GPTClassifier:
    """A :class:`GPTClassifier` with ``base``'s architecture: its weights copied, or random ones."""
    from transformers import GPT2Model

    config = copy.deepcopy(base.model.config)
    config.architectures = None
    with quiet_transformers():
        body = GPT2Model(config)
    if pretrained:
        body.load_state_dict(base.model.transformer.state_dict())
    return GPTClassifier(body, num_classes)


#: The GPT-2 layers LoRA adapts: the attention's query/key/value projection (as in the LoRA paper)
#: and the token embeddings. On a model this small, whose features are far from the task, which
#: *words* matter has to be learned; LoRA on attention alone cannot change that (measured: about 13
#: accuracy points below full fine-tuning at 32 labels per class, against about 5 with embeddings).
LORA_TARGETS: tuple[str, ...] = ("wte", "c_attn")


def _peft(model: GPTClassifier, method: str, rank: int):
    """Wrap ``model`` with LoRA or (IA)^3 (``peft``): only the adapters and the head train."""
    from peft import IA3Config, LoraConfig, get_peft_model

    if method == "lora":
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                            fan_in_fan_out=True, modules_to_save=["head"])
    else:
        config = IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                           fan_in_fan_out=True, modules_to_save=["head"])
    with quiet_transformers():
        return get_peft_model(model, config)


@torch.no_grad()
def _features(model: GPTClassifier, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(ids[i:i + batch_size]).float() for i in range(0, len(ids), batch_size)])


def training_memory(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                    frozen_bytes: int = 0) -> int:
    """Bytes one training step holds at its peak, counted from the tensors themselves.

    Weights + gradients and two AdamW moments for every *trainable* weight + the activations that
    autograd saves for the backward pass (seen through ``saved_tensors_hooks``). ``frozen_bytes``
    adds weights that are used outside ``model`` (a frozen feature extractor). The same count on
    every device; on a GPU ``torch.cuda.max_memory_allocated`` would report it with the
    allocator's overhead.
    """
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    weight_storages = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weight_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    inputs, labels = batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(inputs)
        loss = F.cross_entropy((out.logits if hasattr(out, "logits") else out).float(), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return frozen_bytes + weights + 3 * trainable + sum(saved.values())


def _checkpoint_bytes(save: Callable[[Path], None]) -> int:
    """Bytes of the ``.safetensors`` files a method has to store (configs of ~1 KB not counted)."""
    with tempfile.TemporaryDirectory() as folder, quiet_transformers():
        save(Path(folder))
        return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


@dataclass
class FineTuned:
    """One fine-tuning run and what it cost."""

    method: str
    backbone: str
    budget: int
    seed: int
    accuracy: float
    trainable_params: int
    total_params: int
    seconds: float
    memory_bytes: int
    checkpoint_bytes: int
    history: History = field(repr=False)

    def row(self) -> dict[str, Any]:
        return {"method": self.method, "backbone": self.backbone, "budget": self.budget, "seed": self.seed,
                "accuracy": self.accuracy, "trainable": self.trainable_params, "total": self.total_params,
                "seconds": self.seconds, "memory_MB": self.memory_bytes / 1e6,
                "checkpoint_KB": self.checkpoint_bytes / 1e3}


def finetune(method: str, base: Pretrained, train_data: tuple[torch.Tensor, torch.Tensor],
             test_data: tuple[torch.Tensor, torch.Tensor], *, num_classes: int, steps: int, lr: float,
             batch_size: int, seed: int, lora_rank: int = 8, bf16: bool = False,
             device: torch.device | str = "cpu", measure: bool = True, backbone: str = "pretrained",
             budget: int = 0) -> FineTuned:
    """Adapt ``base`` (left unchanged) to a classification task with one of :data:`FT_METHODS`.

    Every method gets about ``steps`` optimisation steps of ``batch_size`` examples at
    ``lr x LR_FACTOR[method]``, trained by :func:`helpers.train.train`. With ``measure`` it also
    counts the training memory and the size of what the method must save.
    """
    from .methods import epochs_for

    check_methods([method])
    torch.manual_seed(seed)
    start = time.perf_counter()
    x, y = train_data
    epochs, batch = epochs_for(len(x), batch_size, steps)
    common = dict(epochs=epochs, lr=lr * LR_FACTOR[method], batch_size=batch, weight_decay=0.01, seed=seed,
                  bf16=bf16, device=device, progress=False, warmup_steps=max(1, steps // 10))
    model = classifier(base, num_classes, pretrained=method != "scratch").to(device)
    total = count_parameters(model)
    if method == "frozen":  # features computed once; only the head trains, on them
        set_trainable(model.transformer, False)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            features, test_features = _features(model, x.to(device)), _features(model, test_data[0].to(device))
        history = train(model.head, (features, y), **common)
        seconds = time.perf_counter() - start
        accuracy = evaluate(model.head, (test_features, test_data[1]), device=device, bf16=bf16)["acc"]
        body_bytes = sum(p.numel() * p.element_size() for p in model.transformer.parameters())
        memory = training_memory(model.head, (features[:batch], y[:batch].to(device)), body_bytes) if measure else 0
        ckpt = _checkpoint_bytes(lambda f: save_tensors(f, model.head.state_dict())) if measure else 0
        return FineTuned(method, backbone, budget, seed, accuracy, count_parameters(model.head), total, seconds,
                         memory, ckpt, history)

    if method in ("lora", "ia3"):
        model = _peft(model, method, lora_rank)
    history = train(model, train_data, **common)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test_data, device=device, bf16=bf16)["acc"]
    trainable = count_parameters(model, trainable_only=True)
    memory = training_memory(model, (x[:batch].to(device), y[:batch].to(device))) if measure else 0
    if method in ("lora", "ia3"):
        ckpt = _checkpoint_bytes(lambda f: model.save_pretrained(f)) if measure else 0
    else:
        ckpt = _checkpoint_bytes(lambda f: save_tensors(f, model.state_dict())) if measure else 0
    return FineTuned(method, backbone, budget, seed, accuracy, trainable, total, seconds, memory, ckpt, history)


def compare_methods(backbones: Mapping[str, Pretrained], task: TextTask, pool: torch.Tensor,
                    test: torch.Tensor, *, methods: Sequence[str], budgets: Sequence[int],
                    seeds: Iterable[int], seq_len: int, progress: bool = True, **finetune_kw: Any) -> list[FineTuned]:
    """Every method x backbone x label budget x seed, on one fixed test set.

    For each seed and budget the labelled examples are drawn from ``pool`` with
    :func:`helpers.data.label_budget` (a smaller budget is a subset of a larger one); all methods see
    the same examples. ``finetune_kw`` goes to :func:`finetune`.
    """
    from tqdm.auto import tqdm

    check_methods(methods)
    seeds = list(seeds)
    check_budgets(budgets, task, pool)
    first = next(iter(backbones.values()))
    ids = encode_texts(first.tokenizer, task.texts, seq_len)
    test_data = (ids[test], task.labels[test])
    jobs = [(name, budget, seed, method) for name in backbones for budget in budgets for seed in seeds
            for method in methods]
    runs, measured = [], set()
    for name, budget, seed, method in tqdm(jobs, desc="fine-tune", disable=not progress, leave=False):
        chosen = data.label_budget(task.labels, budget, seed=seed, indices=pool)
        measure = (method, name, budget) not in measured  # memory and size do not depend on the seed
        measured.add((method, name, budget))
        runs.append(finetune(method, backbones[name], (ids[chosen], task.labels[chosen]), test_data,
                             num_classes=len(task.classes), seed=seed, measure=measure, backbone=name,
                             budget=budget, **finetune_kw))
    return runs


def summarize_runs(runs: Sequence[FineTuned]):
    """One row per (backbone, budget, method): accuracy mean and std over seeds, and the costs."""
    import pandas as pd

    frame = pd.DataFrame([r.row() for r in runs])
    keys = ["backbone", "budget", "method"]
    grouped = frame.groupby(keys, sort=False)
    table = grouped.agg(acc_mean=("accuracy", "mean"), acc_std=("accuracy", "std"), seeds=("seed", "count"),
                        trainable=("trainable", "first"), total=("total", "first"),
                        seconds=("seconds", "mean"))
    firsts = frame.groupby(keys, sort=False)[["memory_MB", "checkpoint_KB"]].max()
    table = table.join(firsts)
    table["acc_std"] = table["acc_std"].fillna(0.0)
    table["trainable_%"] = 100 * table["trainable"] / table["total"]
    table["accuracy"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["acc_mean"], table["acc_std"])]
    table["about"] = [_ABOUT[m] for m in table.index.get_level_values("method")]
    return table[["accuracy", "acc_mean", "acc_std", "seeds", "trainable", "trainable_%", "seconds",
                  "memory_MB", "checkpoint_KB", "about"]]


def plot_methods(table, tfidf=None):
    """Accuracy (mean and std over seeds) against trainable parameters, one panel per budget."""
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(table.index.get_level_values("budget")))
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets), 3.4), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        rows = table.xs(budget, level="budget").reset_index()
        for _, row in rows.iterrows():
            ax.errorbar(row["trainable"], row["acc_mean"], yerr=row["acc_std"], marker="o", capsize=3,
                        label=row["method"])
        if tfidf is not None and budget in tfidf.index:
            ax.axhline(tfidf.loc[budget, "mean"], color="gray", linestyle="--", label="TF-IDF + LR")
        ax.set(xscale="log", xlabel="trainable parameters", ylabel="test accuracy",
               title=f"{budget} labels per class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
