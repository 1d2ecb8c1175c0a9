"""Text corpora built offline from the Python installation itself: prose (documentation) and code.

The pieces are public so that a task built from the same files (``helpers.text``'s package
tasks) reads them the same way: :func:`stdlib_files` (which files, in which order),
:func:`stdlib_package`, :func:`read_source` and :func:`docstrings`. The two corpora can leave
texts out -- docstrings a task tests on, packages a task asks about -- so that a model never
pretrains on what it is later tested on.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Collection, Iterable

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "ensurepip",
              "turtledemo", "encodings", "pydoc_data", "__pycache__", "lib-dynload", "__phello__"}


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """The standard library's ``.py`` files, without tests, tools, codec tables or third-party code.

    Ordered by the sha256 of their relative path: a fixed order (so corpora are reproducible) that
    mixes packages, so a truncated corpus is a sample of the whole library rather than the modules
    whose names start with "a".
    """
    stdlib = _stdlib()
    files = []
    for folder, subdirs, names in os.walk(stdlib):
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and not d.startswith("config-")]
        for name in names:
            if name.endswith(".py") and not name.startswith("test_") and name != "__main__.py":
                files.append((Path(folder) / name).relative_to(stdlib))
    files.sort(key=lambda rel: hashlib.sha256(rel.as_posix().encode()).hexdigest())
    return tuple(stdlib / rel for rel in files)


def stdlib_package(path: Path) -> str | None:
    """The top-level standard-library package of a source file (``None`` for a plain module)."""
    rel = Path(path).relative_to(_stdlib())
    return rel.parts[0] if len(rel.parts) > 1 else None


def read_source(path: Path) -> str | None:
    """A source file's text, or ``None`` when it is not readable UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of one source file, via ``ast`` (nothing is imported)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    docs = (ast.get_docstring(n, clean=True) for n in nodes)
    return [d.strip() for d in docs if d and len(d.split()) >= 5]  # skip one-word stubs


def _truncate(text: str, max_chars: int | None) -> str:
    """At most ``max_chars`` characters, cut after the last complete line that fits."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars)
    return text[: cut + 1] if cut >= 0 else text[:max_chars]


class CorpusTooSmall(ValueError):
    """A knob asks for more characters of text than the corpus has (raised before any training)."""


def require_chars(available: int, max_chars: int | None, knob: str | None, what: str, hint: str) -> None:
    """Fail when knob ``knob`` asks for ``max_chars`` characters but ``what`` has only ``available``.

    ``knob=None`` (a plain call, not driven by a profile) never fails: the corpus is used whole.
    The message names the knob, its value, the corpus and its size, and what to do (``hint``).
    """
    if knob is not None and max_chars is not None and available < max_chars:
        raise CorpusTooSmall(f"parameter {knob!r}={max_chars} is not allowed: {what} has only {available:,} "
                             f"characters; set {knob} to at most {available} or {hint}")


def _join_until(pieces: Iterable[str], max_chars: int | None, knob: str | None = None, what: str = "the corpus",
                hint: str = "use a larger corpus") -> str:
    """Join text pieces with blank lines, stopping once ``max_chars`` is reached (then truncate).

    If the pieces run out first, the corpus is smaller than asked: with ``knob`` given that is an
    error (:func:`require_chars`), otherwise the whole corpus is returned.
    """
    out, size = [], 0
    for piece in pieces:
        out.append(piece)
        size += len(piece) + 2
        if max_chars is not None and size > max_chars:
            break
    else:
        require_chars(len("\n\n".join(out) + "\n"), max_chars, knob, what, hint)
    return _truncate("\n\n".join(out) + "\n", max_chars)


def general_corpus(max_chars: int | None = None, *, exclude: Collection[str] = (), knob: str | None = None) -> str:
    """English prose: the Python documentation that ships with every Python installation.

    First the reference-manual topics of ``pydoc_data.topics`` (what ``help("if")`` shows, about
    0.5 MB), then the docstrings of the standard-library modules, classes and functions, read with
    ``ast`` from the source files (no module is imported) -- except the docstrings in ``exclude``
    (for example a task's test texts). Deterministic; cut at a line boundary to at most
    ``max_chars`` characters. With ``knob`` (e.g. ``"text_chars"``), asking for more than there is
    raises :class:`CorpusTooSmall` naming that knob.
    """
    from pydoc_data.topics import topics

    exclude = frozenset(exclude)

    def pieces():
        for key in sorted(topics):
            yield topics[key].strip()
        for path in stdlib_files():
            source = read_source(path)
            if source:
                yield from (d for d in docstrings(source) if d not in exclude)

    return _join_until(pieces(), max_chars, knob, "the shipped prose corpus (Python documentation and docstrings)",
                       "give your own, larger corpus with text_corpus=PATH")


def specialist_corpus(max_chars: int | None = None, *, exclude_packages: Collection[str] = (),
                      knob: str | None = None) -> str:
    """Python source code: the standard library's ``.py`` files, whole, in a fixed order.

    The "specialist domain" next to :func:`general_corpus`'s prose (note that the docstrings in
    this code also appear in the general corpus). Files of the top-level packages in
    ``exclude_packages`` (see :func:`stdlib_package`) are left out. Deterministic; cut at a line
    boundary to at most ``max_chars`` characters (``knob``: as in :func:`general_corpus`).
    """
    exclude_packages = frozenset(exclude_packages)

    def pieces():
        for path in stdlib_files():
            if exclude_packages and stdlib_package(path) in exclude_packages:
                continue
            source = read_source(path)
            if source and source.strip():
                yield source.strip()

    return _join_until(pieces(), max_chars, knob, "the shipped Python source corpus (this Python's standard "
                       "library)", "lower it: this corpus cannot be replaced")


def text_file(path: str | Path) -> str:
    """Your own corpus: the text of a UTF-8 file (for example a ``.txt`` book)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text_file: no file at {path.resolve()} (give the path of a UTF-8 "
                                f"text file, e.g. data/my_corpus.txt)")
    return path.read_text(encoding="utf-8")


# =================================================================================================
# Your own corpus: the ``text_corpus`` knob
# =================================================================================================

#: Files a folder corpus reads (recursively, in sorted path order); other files are ignored.
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
#: The smallest corpus accepted: the smallest ``text_chars`` a profile may ask for.
MIN_CORPUS_CHARS = 1_000
_EXPECTED = ("a UTF-8 text file, a folder of text files (*.txt, *.md, *.rst, *.text), or a folder written by "
             "datasets' Dataset.save_to_disk")
_active_text_corpus: Path | None = None


class CorpusError(ValueError):
    """A ``text_corpus`` that is missing, empty, too small or unreadable (the message names the path)."""


def source_path(value: str | Path) -> Path:
    """A ``text_corpus`` / image-folder path as given: ``~`` expanded; a relative path is taken from
    the repository root (where ``make`` and ``python -m helpers.run`` run), so the same value works
    in a notebook (whose working folder is ``notebooks/``) and in batch."""
    from ..checkpoints import repo_root

    path = Path(value).expanduser()
    return path if path.is_absolute() else repo_root() / path


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``)."""
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file() \
        or (folder / "state.json").is_file()


def text_source(value: str | Path) -> tuple[str, Path, list[Path]]:
    """What a ``text_corpus`` value points at: ``(kind, path, files)`` without reading any text.

    ``kind`` is ``"file"``, ``"folder"`` (its text files, sorted) or ``"datasets"`` (every file of
    the saved dataset, for the cache key). Raises :class:`CorpusError` -- naming the path and what
    was expected -- for a path that does not exist or a folder with no text in it.
    """
    path = source_path(value)
    if path.is_file():
        return "file", path, [path]
    if not path.is_dir():
        raise CorpusError(f"parameter 'text_corpus'={str(value)!r}: nothing at {path}; expected {_EXPECTED}")
    if _is_saved_dataset(path):
        return "datasets", path, sorted(p for p in path.rglob("*") if p.is_file())
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise CorpusError(f"parameter 'text_corpus'={str(value)!r}: the folder {path} holds no text files; "
                          f"expected {_EXPECTED}")
    return "folder", path, files


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"parameter 'text_corpus': {path} is not UTF-8 text (byte {err.start} cannot be "
                          f"decoded); expected {_EXPECTED}") from None
    except OSError as err:
        raise CorpusError(f"parameter 'text_corpus': cannot read {path} ({err.strerror}); expected "
                          f"{_EXPECTED}") from None


def _read_saved_dataset(path: Path) -> str:
    """The rows of a saved ``datasets`` folder, joined by blank lines: its ``text`` column (or its
    only string column); for a ``DatasetDict``, the ``train`` split (else every split, by name)."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise CorpusError(f"parameter 'text_corpus': {path} was written by datasets' save_to_disk, and reading "
                          f"it needs the `datasets` package: pip install -e '.[data]'") from None
    try:
        loaded = load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a damaged folder
        raise CorpusError(f"parameter 'text_corpus': cannot load the saved dataset {path} ({err})") from None
    splits = ([loaded["train"]] if "train" in loaded else [loaded[k] for k in sorted(loaded)]) \
        if isinstance(loaded, DatasetDict) else [loaded]
    texts = []
    for split in splits:
        strings = [name for name, feature in split.features.items() if getattr(feature, "dtype", "") == "string"]
        column = "text" if "text" in strings else (strings[0] if len(strings) == 1 else None)
        if column is None:
            raise CorpusError(f"parameter 'text_corpus': the saved dataset {path} has no 'text' column and not "
                              f"exactly one string column (columns: {list(split.features)})")
        texts += [t.strip() for t in split[column] if t and t.strip()]
    return "\n\n".join(texts) + "\n" if texts else ""


def user_corpus(value: str | Path, max_chars: int | None = None, *, knob: str | None = None) -> str:
    """Your own corpus (the ``text_corpus`` knob): a text file, a folder of text files, or a saved dataset.

    * a file is read as UTF-8;
    * a folder: its ``*.txt``, ``*.md``, ``*.rst`` and ``*.text`` files (sub-folders too, hidden ones
      skipped), in sorted path order, joined by blank lines;
    * a folder written by ``datasets``' ``save_to_disk``: the ``text`` column (``datasets`` is imported
      only then; it is the optional extra ``.[data]``).

    The joined text is cached in the store like every other artefact (a folder keyed by the
    source's path and the size and modification time of each file, with a sha256 manifest), so a
    changed file is noticed and the corpus rebuilt. Missing, empty, undecodable or tiny sources
    (under :data:`MIN_CORPUS_CHARS`) raise :class:`CorpusError` naming the path; asking for more than
    there is, with ``knob`` given, raises :class:`CorpusTooSmall`. Cut at a line to ``max_chars``.
    """
    from ..checkpoints import atomic_write_bytes, cached

    kind, path, files = text_source(value)
    stats = [[f.relative_to(path).as_posix() if kind != "file" else f.name, f.stat().st_size, f.stat().st_mtime_ns]
             for f in files]
    config = {"source": str(path), "kind": kind, "files": stats, "version": 1}

    def build(folder: Path) -> None:
        if kind == "datasets":
            text = _read_saved_dataset(path)
        else:
            text = "\n\n".join(t.strip() for t in map(_read_utf8, files) if t.strip())
            text = text + "\n" if text else ""
        atomic_write_bytes(folder / "corpus.txt", text.encode("utf-8"))

    text = (cached("text-corpus", config, build, verbose=False) / "corpus.txt").read_text(encoding="utf-8")
    if not text.strip():
        raise CorpusError(f"parameter 'text_corpus'={str(value)!r}: {path} holds no text (it is empty); "
                          f"expected {_EXPECTED}")
    if len(text) < MIN_CORPUS_CHARS:
        raise CorpusError(f"parameter 'text_corpus'={str(value)!r}: {path} holds only {len(text):,} characters "
                          f"of text; at least {MIN_CORPUS_CHARS:,} are needed")
    require_chars(len(text), max_chars, knob, f"the corpus text_corpus={str(path)!r}",
                  "give a larger corpus")
    return _truncate(text, max_chars)


def use_text_corpus(value: str | Path | None) -> None:
    """Make ``value`` the pretraining text of the text track (``None``: the shipped prose again).

    :func:`helpers.config.resolve` calls this with the ``text_corpus`` knob, so a notebook (or a
    batch run with ``-p text_corpus=...``) pretrains on your text without any other change; see
    :func:`active_text_corpus`.
    """
    global _active_text_corpus
    _active_text_corpus = None if value is None else source_path(value)


def active_text_corpus() -> Path | None:
    """The corpus set by :func:`use_text_corpus` (``None``: the shipped prose corpus)."""
    return _active_text_corpus
