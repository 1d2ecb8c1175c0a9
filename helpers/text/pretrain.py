"""Pretraining the text track's models: a GPT-2 by next-token prediction, a BERT by masked tokens,
continued pretraining on code, and samples along the way.

Every model is stored with ``save_pretrained`` (what ``from_pretrained`` and ``pipeline(...)``
read) through :func:`helpers.checkpoints.load_or_build`: a verified, atomically written folder keyed
by the config, built once even when two processes ask for it at the same time.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import data
from ..checkpoints import atomic_write_json, load_or_build
from ..models import count_parameters
from ..train import IGNORE, History, train, train_mode
from .corpora import MASK, PAD, code_corpus
from .lm import LMCorpus, fast_tokenizer, gpt_for, lm_corpus, quiet_transformers, split_blocks, tiny_bert

_VERSION = 1  # bump when anything here changes what is cached: old caches are then not used


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
    folder renamed into place when complete; a folder that fails verification is retrained; two
    processes asking for it at once train it once (:func:`helpers.checkpoints.load_or_build`).
    """
    def pretrain() -> tuple[Any, dict[str, Any]]:
        model = build()
        summary = {"config": dict(config), **train_fn(model)}
        return model.cpu(), summary

    def save(made: tuple[Any, dict[str, Any]], staging: Path) -> None:
        model, summary = made
        with quiet_transformers():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "summary.json", summary)

    def load(folder: Path) -> tuple[Any, dict[str, Any]]:
        return reload(folder, type(build())), json.loads((folder / "summary.json").read_text())

    (model, summary), folder, trained = load_or_build(kind, config, pretrain, save, load, rebuilding="retraining")
    return Pretrained(model, tokenizer, folder, summary, trained=trained)


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
    from ..train import default_param_groups

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


def pretrain_gpts(P: Mapping[str, Any], device: torch.device | str = "cpu", corpus: LMCorpus | None = None,
                  progress: bool = True) -> list[Pretrained]:
    """One :func:`pretrain_gpt` per pretraining seed: ``lm_pretrain_seeds`` of them (each loaded if it
    was trained before).

    Entry ``j`` is pretrained with :func:`helpers.config.pretrain_params` ``(P, j, "lm")``: the same
    text, tokenizer and recipe, only the seed (initial weights, batch order, samples) differs. Entry 0
    is the base model every single-model view uses. Fine-tuning seed number ``i`` starts from entry
    ``i mod len``: pass the list as a backbone of :func:`~helpers.text.finetune.compare_methods`, so
    an effect's spread over seeds covers pretraining as well as fine-tuning.
    """
    from ..config import pretrain_params

    corpus = corpus or lm_corpus(P["text_chars"], P["vocab_size"], P["seq_len"])
    return [pretrain_gpt(pretrain_params(P, j, "lm"), device, corpus, progress)
            for j in range(P.get("lm_pretrain_seeds", 1))]


def _cost(model: nn.Module, history: History, device, P: Mapping[str, Any]) -> dict[str, Any]:
    tokens = history.examples_seen
    params = count_parameters(model)
    return {"params": params, "tokens_seen": tokens, "wall_time": history.wall_time,
            "tokens_per_s": tokens / history.wall_time, "flops": 6 * params * tokens,
            "device": str(device), "threads": torch.get_num_threads(), "bf16": bool(P["text_bf16"])}


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
