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


def _join_until(pieces: Iterable[str], max_chars: int | None) -> str:
    """Join text pieces with blank lines, stopping once ``max_chars`` is reached (then truncate)."""
    out, size = [], 0
    for piece in pieces:
        out.append(piece)
        size += len(piece) + 2
        if max_chars is not None and size > max_chars:
            break
    return _truncate("\n\n".join(out) + "\n", max_chars)


def general_corpus(max_chars: int | None = None, *, exclude: Collection[str] = ()) -> str:
    """English prose: the Python documentation that ships with every Python installation.

    First the reference-manual topics of ``pydoc_data.topics`` (what ``help("if")`` shows, about
    0.5 MB), then the docstrings of the standard-library modules, classes and functions, read with
    ``ast`` from the source files (no module is imported) -- except the docstrings in ``exclude``
    (for example a task's test texts). Deterministic; cut at a line boundary to at most
    ``max_chars`` characters.
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

    return _join_until(pieces(), max_chars)


def specialist_corpus(max_chars: int | None = None, *, exclude_packages: Collection[str] = ()) -> str:
    """Python source code: the standard library's ``.py`` files, whole, in a fixed order.

    The "specialist domain" next to :func:`general_corpus`'s prose (note that the docstrings in
    this code also appear in the general corpus). Files of the top-level packages in
    ``exclude_packages`` (see :func:`stdlib_package`) are left out. Deterministic; cut at a line
    boundary to at most ``max_chars`` characters.
    """
    exclude_packages = frozenset(exclude_packages)

    def pieces():
        for path in stdlib_files():
            if exclude_packages and stdlib_package(path) in exclude_packages:
                continue
            source = read_source(path)
            if source and source.strip():
                yield source.strip()

    return _join_until(pieces(), max_chars)


def text_file(path: str | Path) -> str:
    """Your own corpus: the text of a UTF-8 file (for example a ``.txt`` book)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text_file: no file at {path.resolve()} (give the path of a UTF-8 "
                                f"text file, e.g. data/my_corpus.txt)")
    return path.read_text(encoding="utf-8")
