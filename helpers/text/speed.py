"""Where the time and memory of the text track go: ``transformers``' GPT-2 against a hand-written
GPT (:func:`throughput_table`), the cost of a run in FLOPs and MFU (:func:`training_cost`), the
cost of pretraining against each fine-tuning (:func:`cost_table`), and the bytes one training step
holds (:func:`training_memory`).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..models import count_parameters, tiny_gpt
from .lm import HandGPT, quiet_transformers

if TYPE_CHECKING:
    import pandas as pd


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


#: Backward FLOPs per parameter and token of fine-tuning, by method (forward is always 2): 4 when
#: every weight trains (the gradient w.r.t. the activations *and* the weights); 2 when the weights are
#: frozen but the gradient must flow back through them to LoRA's or (IA)^3's few trained parameters;
#: 0 for ``frozen``, whose features are computed once and never backpropagated through.
BACKWARD_FLOPS = {"scratch": 4, "full": 4, "lora": 2, "ia3": 2, "frozen": 0}
PRETRAINING_STAGE = "pretraining (02, next token)"


def finetuning_flops(method: str, total_params: float, tokens: int) -> float:
    """Training FLOPs of one fine-tuning run, estimated like pretraining's ``6 x N x tokens``:
    ``(2 forward + BACKWARD_FLOPS[method]) x all parameters x tokens read``."""
    return (2 + BACKWARD_FLOPS[method]) * total_params * tokens


def cost_table(summary: Mapping[str, Any], methods: pd.DataFrame, *, labels: int, tokens: int) -> pd.DataFrame:
    """The articles' cost comparison for the text track: pretraining the GPT, then each fine-tuning.

    ``summary`` is the pretrained GPT's (``Pretrained.summary``: tokens seen, wall time, FLOPs,
    parameters, history); ``methods`` has one row per method at one budget
    (:func:`helpers.text.runs_table`'s columns); every fine-tuning run used ``labels`` labelled
    examples and read ``tokens`` tokens. Pretraining reads no label at all.
    """
    import pandas as pd

    rows = [{"stage": PRETRAINING_STAGE, "labels used": 0, "tokens read": summary["tokens_seen"],
             "wall time (s)": summary["wall_time"], "training FLOPs": summary["flops"],
             "parameters updated": summary["params"],
             "result": f"validation perplexity {summary['history']['rows'][-1]['val_ppl']:.1f}"}]
    for _, row in methods.iterrows():
        total = row["trainable"] / (row["trainable_%"] / 100)
        rows.append({"stage": f"fine-tuning: {row['method']}", "labels used": labels, "tokens read": tokens,
                     "wall time (s)": row["seconds"], "training FLOPs": finetuning_flops(row["method"], total, tokens),
                     "parameters updated": row["trainable"], "result": f"test accuracy {row['accuracy']}"})
    cost = pd.DataFrame(rows).set_index("stage")
    cost["FLOPs vs pretraining"] = cost["training FLOPs"] / summary["flops"]
    return cost


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
