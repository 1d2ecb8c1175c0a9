"""The text track: pretrain a tiny transformer on real prose, then adapt it (notebooks 02, 04, 05, 08, 10).

Everything is offline and built from what every Python installation carries. One module per stage:

* :mod:`.corpora` -- English prose (the CPython reference topics and the standard library's
  docstrings) for pretraining, Python source for *continued* pretraining, both from
  :mod:`helpers.data`'s corpora; no test example of a fine-tuning task is ever read, not even
  unlabelled. Classification tasks whose labels come from the text's real structure (which
  standard-library package a docstring or a function belongs to, :func:`package_task`), a fixed
  test split and a TF-IDF baseline.
* :mod:`.lm` -- token blocks with a held-out split (:func:`lm_corpus`), unigram and bigram
  baselines (:func:`ngram_baselines`), a GPT-2 and a BERT built from ``transformers`` configs, a
  hand-written GPT, and :func:`quiet_transformers`.
* :mod:`.pretrain` -- pretraining by the one loop :func:`helpers.train.train`, stored with
  ``save_pretrained`` through :func:`helpers.checkpoints.load_or_build` (verified, atomic, built
  once) (:func:`pretrain_gpt`, one per pretraining seed :func:`pretrain_gpts`, :func:`pretrain_bert`,
  :func:`continue_pretraining`).
* :mod:`.speed` -- where ``GPT2LMHeadModel`` spends the time a hand-written GPT does not
  (:func:`throughput_table`), the cost of a run in FLOPs (:func:`training_cost`, :func:`cost_table`)
  and memory.
* :mod:`.finetune` -- the ways to adapt the pretrained model (:data:`FT_METHODS`): scratch, frozen
  features, full fine-tuning and the PEFT methods (:func:`finetune_text`, :func:`compare_methods`,
  :func:`runs_table`), with their costs and what they forget of the pretraining text; specialising
  the language model itself, fully or with LoRA (:func:`specialise_lm`).
* :mod:`.peft_methods` -- the parameter-efficient methods as the articles name them: BitFit, LoRA,
  (IA)^3, bottleneck adapters, prefix and prompt tuning (:func:`prepare`), the PEFT table
  (:func:`peft_table`) and the LoRA rank x target ablation (:func:`lora_ablation`).

Every public name is importable from ``helpers.text``; the figures are in :mod:`helpers.plots`.
"""

from .corpora import (EOS, MASK, MAX_PER_CLASS, PAD, TASK_KINDS, TASK_PACKAGES, TEST_PER_CLASS, TextTask,
                      code_corpus, compression_table, encode_texts, package_task, pretraining_corpus, show_tokens,
                      task_split, tfidf_accuracy, vocab_ladder)
from .finetune import (FT_METHODS, LM_LORA_TARGETS, LORA_TARGETS, LR_FACTOR, SPECIALISE_METHODS, GPTClassifier,
                       TextRun, classifier, compare_methods, finetune_text, lora_config, lora_lm, per_seed, runs_table,
                       specialise_lm)
from .peft_methods import (ADAPTER_SIZE, LORA_TARGET_SETS, PEFT_METHODS, REMOVABLE, VIRTUAL_TOKENS, Bottleneck,
                           add_adapters, bitfit, english_perplexity, forgetting_blocks, learning_forgetting_figure,
                           lora_ablation, peft_lora_output, peft_table, prepare, remove_adapters)
from .lm import (FAST_GPT, HandGPT, LMCorpus, fast_tokenizer, gpt_for, lm_corpus, ngram_baselines, quiet_transformers,
                 right_padding_is_safe, split_blocks, tiny_bert)
from .pretrain import (LM_BETAS, LM_WARMUP, SAMPLE_PROMPTS, Pretrained, SampleHook, compare_objectives,
                       continue_pretraining, fill_in, generate, lm_recipe, load_or_pretrain, mask_tokens,
                       pretrain_bert, pretrain_gpt, pretrain_gpts, reload)
from .speed import (BACKWARD_FLOPS, cost_table, finetuning_flops, throughput_table, throughput_tables, training_cost,
                    training_memory)

__all__ = [
    "EOS", "PAD", "MASK", "TASK_PACKAGES", "TASK_KINDS", "MAX_PER_CLASS", "TEST_PER_CLASS",
    "pretraining_corpus", "code_corpus", "show_tokens", "vocab_ladder", "compression_table",
    "TextTask", "package_task", "encode_texts", "task_split", "tfidf_accuracy",
    "FAST_GPT", "LMCorpus", "lm_corpus", "split_blocks", "ngram_baselines",
    "fast_tokenizer", "gpt_for", "tiny_bert", "HandGPT", "quiet_transformers", "right_padding_is_safe",
    "Pretrained", "load_or_pretrain", "reload", "SampleHook", "generate", "SAMPLE_PROMPTS",
    "LM_BETAS", "LM_WARMUP", "lm_recipe", "pretrain_gpt", "pretrain_gpts", "pretrain_bert", "mask_tokens", "fill_in",
    "compare_objectives", "continue_pretraining",
    "throughput_table", "throughput_tables", "training_cost", "training_memory",
    "BACKWARD_FLOPS", "finetuning_flops", "cost_table",
    "FT_METHODS", "LR_FACTOR", "LORA_TARGETS", "LM_LORA_TARGETS", "GPTClassifier", "classifier", "lora_config",
    "TextRun", "finetune_text", "compare_methods", "per_seed", "runs_table",
    "SPECIALISE_METHODS", "lora_lm", "specialise_lm",
    "PEFT_METHODS", "REMOVABLE", "VIRTUAL_TOKENS", "ADAPTER_SIZE", "LORA_TARGET_SETS", "Bottleneck", "add_adapters",
    "remove_adapters", "bitfit", "prepare", "english_perplexity", "forgetting_blocks", "peft_table", "lora_ablation",
    "learning_forgetting_figure",
    "peft_lora_output",
]
