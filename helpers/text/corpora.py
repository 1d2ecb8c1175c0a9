"""The text track's data: corpora, tokens and classification tasks built from the standard library.

* **Corpora** -- English prose for pretraining, Python source for *continued* pretraining, both
  from :mod:`helpers.data`'s corpora. No test example of a fine-tuning task is ever read, not even
  unlabelled: the prose corpus leaves out the docstring task's test docstrings, the code corpus
  leaves out the code task's packages (:data:`TASK_PACKAGES`) entirely (:func:`pretraining_corpus`,
  :func:`code_corpus`).
* **Tasks** -- which standard-library package a docstring or a function belongs to
  (:func:`package_task`): labels from the text's real structure, a fixed test set
  (:func:`task_split`), and a TF-IDF baseline (:func:`tfidf_accuracy`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import data
from ..checkpoints import atomic_write_json, cached

EOS, PAD, MASK = 0, 1, 2  # the ids of data.SPECIAL_TOKENS
_TASK_VERSION = 2  # bump when anything changes what a task caches: old caches are then not used

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


def pretraining_corpus(max_chars: int | None = None, knob: str | None = "text_chars") -> str:
    """English prose for pretraining: :func:`helpers.data.general_corpus` minus the test docstrings.

    The reference-manual topics of ``pydoc_data`` come first, then the docstrings of the standard
    library in :func:`helpers.data.general_corpus`'s order -- except the docstrings of the
    fine-tuning task's *test set* (:func:`package_task`, :func:`task_split`): the model may read
    the task's domain, as any large pretraining corpus would, but never a text it is tested on.
    Deterministic, cut at a line.

    **Your own text.** With the ``text_corpus`` knob set (:func:`helpers.data.use_text_corpus`,
    which :func:`helpers.config.resolve` calls), this returns that corpus instead
    (:func:`helpers.data.user_corpus`): it replaces the *general-domain pretraining text* only. The
    specialist domain (:func:`code_corpus`, Python source) and the fine-tuning tasks
    (:func:`package_task`) stay the workbook's, so the notebooks still compare the same methods on
    the same tasks, now starting from a model pretrained on your text. (Your corpus is not searched
    for the tasks' test docstrings.)

    Asking for more characters than the corpus has raises
    :class:`helpers.data.CorpusTooSmall` naming ``knob`` (``None``: use what there is).
    """
    own = data.active_text_corpus()
    if own is not None:
        return data.user_corpus(own, max_chars, knob=knob)
    task = package_task("docstring")
    return data.general_corpus(max_chars, exclude={task.texts[i] for i in task_split(task)[1].tolist()}, knob=knob)


def code_corpus(max_chars: int | None = None, knob: str | None = "dapt_chars") -> str:
    """Python source for continued pretraining: the standard library minus the task's packages.

    The code task (:func:`package_task` with ``kind="code"``) asks which package a function comes
    from; whole packages are held out here, so no function of the task is ever read. Asking for
    more than there is raises :class:`helpers.data.CorpusTooSmall` naming ``knob``.
    """
    return data.specialist_corpus(max_chars, exclude_packages=_HELD_OUT, knob=knob)


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

    def max_budget(self, indices: torch.Tensor) -> int:
        """The largest label budget ``indices`` (a pool) allows: the size of its smallest class.

        Pass it to :func:`helpers.config.check_budgets` to fail before training on a budget too big.
        """
        return int(torch.bincount(self.labels[indices], minlength=len(self.classes)).min())


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
        return data.docstrings(source)
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
    files = [p for p in data.stdlib_files() if data.stdlib_package(p) in owner]
    config = {"kind": kind, "version": _TASK_VERSION, "classes": TASK_PACKAGES, "max_per_class": MAX_PER_CLASS,
              "files": hashlib.sha256("".join(p.as_posix() for p in files).encode()).hexdigest()}

    def build(folder: Path) -> None:
        seen: dict[str, str | None] = {}
        for path in files:
            source = data.read_source(path)
            for text in _examples_of(source, kind) if source else []:
                label = owner[data.stdlib_package(path)]
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


def tfidf_accuracy(task: TextTask, train_idx: torch.Tensor, test_idx: torch.Tensor) -> float:
    """A strong classical baseline: TF-IDF of words and word pairs + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    x_train = vectorizer.fit_transform([task.texts[i] for i in train_idx.tolist()])
    x_test = vectorizer.transform([task.texts[i] for i in test_idx.tolist()])
    classifier = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, task.labels[train_idx].numpy())
    return float((classifier.predict(x_test) == task.labels[test_idx].numpy()).mean())
