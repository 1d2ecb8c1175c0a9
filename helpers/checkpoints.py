"""Checkpoints and caches that never lose work and are never silently wrong.

Everything the workbook computes once and reuses (a generated dataset, a pretrained model, a
tokenizer) is stored the same way: a folder named after the *hash of the config that produced it*,
holding the artefact files and a ``manifest.json`` with that config and the sha256 of every file.

* Writes are atomic: files go to a temporary folder that is renamed into place only when complete,
  so an interrupted run leaves either the old artefact or none, never half of one.
* Loads are verified: a missing file, a changed byte or a config that does not match raises
  :class:`CorruptArtifact`; :func:`cached` and :func:`load_or_train` then rebuild instead of using it.
* Builds are locked: two processes that need the same missing artefact (two notebooks run in
  parallel by ``python -m helpers.run --jobs 2``, or by Dask workers on several machines sharing
  the store) do not both build it. The first holds
  ``<store>/.locks/<kind>/<hash>.lock`` while it builds; the second waits, then loads what the
  first made (see :func:`build_lock`, :func:`load_or_build`).

Typical use (this is what lets every notebook run on its own)::

    model = load_or_train("cnn-pretrain", config, train_fn=lambda: pretrain(config))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; builds are then not serialised across processes
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


class CorruptArtifact(RuntimeError):
    """A stored artefact is missing a file, fails its checksum, or was built from another config."""


def repo_root() -> Path:
    """The workbook's top folder (the parent of the ``helpers`` package)."""
    return Path(__file__).resolve().parent.parent


def store_root() -> Path:
    """Where caches and checkpoints live: ``$WORKBOOK_STORE`` if set, else ``<repo>/data/store``."""
    return Path(os.environ.get("WORKBOOK_STORE", repo_root() / "data" / "store"))


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results and caches are meant to be read
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def artifact_dir(kind: str, config: Mapping[str, Any]) -> Path:
    """The folder an artefact of this ``kind`` built from ``config`` lives in."""
    return store_root() / kind / config_hash(config)


@contextlib.contextmanager
def writing(kind: str, config: Mapping[str, Any]) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes the verified artefact of ``config``.

    Write any files into the yielded folder. When the block ends without an exception a manifest
    (config + sha256 of every file) is added and the folder is renamed into place atomically.
    """
    final = artifact_dir(kind, config)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    staging.chmod(0o755)  # mkdtemp makes it private; a shared store should stay readable
    try:
        yield staging
        files = {
            p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST
        }
        manifest = {"kind": kind, "config": json.loads(json.dumps(config, default=str)),
                    "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(staging / MANIFEST, manifest)
        if final.exists():  # a stale or corrupt copy: replace it
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def verify(kind: str, config: Mapping[str, Any]) -> Path:
    """Return the artefact folder of ``config`` after checking its manifest and every checksum.

    Raises :class:`FileNotFoundError` when it was never built and :class:`CorruptArtifact` when it
    exists but cannot be trusted (missing/extra bytes, other config).
    """
    folder = artifact_dir(kind, config)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"no {kind!r} artefact for this config at {folder}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptArtifact(f"{manifest_path}: unreadable manifest ({err})") from err
    expected_config = json.loads(json.dumps(config, default=str))
    if manifest.get("config") != expected_config:
        raise CorruptArtifact(f"{folder}: built from another config than the one asked for")
    for name, digest in manifest.get("files", {}).items():
        path = folder / name
        if not path.exists():
            raise CorruptArtifact(f"{path}: listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise CorruptArtifact(f"{path}: sha256 does not match the manifest (truncated or edited)")
    return folder


class _ProcessLocks:
    """The threads of one process taking turns on a lock file: POSIX record locks belong to the
    process (a second ``lockf`` from another thread would succeed, and closing any descriptor of
    the file drops the lock), so threads queue on an ``RLock`` per path and the outermost holder
    owns the one open descriptor."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}
        self.depth: dict[str, int] = {}

    def get(self, path: Path) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(str(path), threading.RLock())


_PROCESS_LOCKS = _ProcessLocks()


@contextlib.contextmanager
def build_lock(kind: str, config: Mapping[str, Any], *, verbose: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``<store>/.locks/<kind>/<hash>.lock`` for the duration of the block.

    Whoever builds an artefact holds its lock; a second process asking for the same artefact waits
    here (saying so when ``verbose``) and, once it has the lock, should look again before building:
    :func:`cached` and :func:`load_or_train` do exactly that, so the artefact is built once and the
    waiter loads it.

    The lock is a POSIX record lock (``fcntl.lockf``), the kind network file systems implement
    (NFS through its lock manager, Lustre, GPFS, CephFS), so it holds between processes on different
    machines sharing the store (Dask workers on a cluster) as well as on one machine. It is released
    when the block ends or the process dies (a killed build never leaves a stale lock); threads of
    one process take turns before it (:class:`_ProcessLocks`). The small lock file stays (deleting
    it would race), outside ``<store>/<kind>/`` so that folder holds artefacts only. Where locks are
    unavailable (Windows, a file system mounted without locking) the block runs unlocked, with a
    warning.
    """
    path = store_root() / ".locks" / kind / f"{config_hash(config)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path)
    with _PROCESS_LOCKS.get(path):
        if _PROCESS_LOCKS.depth.get(key):  # this thread holds it already (a nested build)
            _PROCESS_LOCKS.depth[key] += 1
            try:
                yield
            finally:
                _PROCESS_LOCKS.depth[key] -= 1
            return
        with open(path, "a+b") as handle:
            locked = False
            if fcntl is not None:
                try:
                    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except (BlockingIOError, PermissionError):  # held by another process
                    if verbose:
                        print(f"waiting for another process building {kind} "
                              f"({config_hash(config)}) ...", flush=True)
                    waited = time.perf_counter()
                    fcntl.lockf(handle, fcntl.LOCK_EX)
                    locked = True
                    if verbose:
                        print(f"... it finished after {time.perf_counter() - waited:.1f} s", flush=True)
                except OSError as err:  # e.g. ENOLCK on a file system without locks
                    warnings.warn(f"cannot lock {path} ({err}); building {kind} unlocked", stacklevel=3)
            _PROCESS_LOCKS.depth[key] = 1
            try:
                yield
            finally:
                _PROCESS_LOCKS.depth[key] = 0
                if locked:
                    fcntl.lockf(handle, fcntl.LOCK_UN)


def _existing(kind: str, config: Mapping[str, Any], rebuilding: str | None) -> Path | None:
    """The verified artefact folder, or ``None`` when missing or untrustworthy (then warn
    ``"<rebuilding> <kind>: <why>"`` unless ``rebuilding`` is ``None``)."""
    try:
        return verify(kind, config)
    except FileNotFoundError:
        return None
    except CorruptArtifact as err:
        if rebuilding:
            warnings.warn(f"{rebuilding} {kind}: {err}", stacklevel=4)  # the caller of cached() etc.
        return None


class Built(NamedTuple):
    """What :func:`load_or_build` returns: the artefact, its verified folder, whether it was built now."""

    value: Any
    folder: Path
    built: bool


def load_or_build(kind: str, config: Mapping[str, Any], build: Callable[[], Any],
                  save: Callable[[Any, Path], None], load: Callable[[Path], Any], *,
                  verbose: bool = True, rebuilding: str = "rebuilding") -> Built:
    """The one way anything is stored: load the verified artefact of ``config``, or build and save it.

    ``build()`` makes the artefact (a dataset, a trained model, a summary), ``save(value, folder)``
    writes it into an empty staging folder that becomes the artefact atomically, with its manifest
    (:func:`writing`); ``load(folder)`` reads a verified folder back. A corrupt or mismatching copy
    is reported (``"<rebuilding> <kind>: <why>"``) and rebuilt, never used. Concurrent callers build
    it once: the builder holds :func:`build_lock`, a waiter looks again once it has the lock and
    loads what the builder made. :func:`cached` and :func:`load_or_train` are this with a fixed
    ``save``/``load``; ``helpers.text`` stores ``transformers`` models through it too.
    """
    folder = _existing(kind, config, rebuilding)
    if folder is None:
        with build_lock(kind, config, verbose=verbose):
            folder = _existing(kind, config, None)  # another process may have built it meanwhile
            if folder is None:
                value = build()
                with writing(kind, config) as staging:
                    save(value, staging)
                return Built(value, artifact_dir(kind, config), True)
    return Built(load(folder), folder, False)


def cached(kind: str, config: Mapping[str, Any], build: Callable[[Path], None],
           *, verbose: bool = True) -> Path:
    """Return a verified artefact folder for ``config``, calling ``build(folder)`` if needed.

    ``build`` receives an empty folder and writes its files there. A corrupt or mismatching copy is
    reported and rebuilt, never used. Concurrent callers build it once (see :func:`load_or_build`).
    """
    def announce() -> None:
        if verbose:
            print(f"building {kind} ({config_hash(config)}) ...", flush=True)

    return load_or_build(kind, config, announce, lambda _, staging: build(staging), lambda folder: folder,
                         verbose=verbose).folder


# --- tensors and models -------------------------------------------------------------------------

def save_tensors(folder: Path, tensors: Mapping[str, torch.Tensor], name: str = WEIGHTS) -> None:
    """Save tensors with safetensors (contiguous CPU copies; safe to call on a live model)."""
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(Path(folder) / name))


def load_tensors(folder: Path, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / name))


def load_or_train(kind: str, config: Mapping[str, Any], model: torch.nn.Module,
                  train_fn: Callable[[torch.nn.Module], Mapping[str, Any] | None]) -> dict[str, Any]:
    """Load ``model``'s weights from the verified checkpoint of ``config``, or train and save them.

    ``model`` is a freshly built module (its architecture follows from ``config``). ``train_fn(model)``
    trains it in place and may return a JSON-serialisable summary (history, cost) that is stored
    with the weights and returned on later loads, so a notebook that reuses a checkpoint still
    knows what it cost to make. Returns ``{"trained": bool, "folder": Path, **summary}``.
    A second process asking for the same checkpoint while it trains waits and then loads it
    (see :func:`load_or_build`), so it is trained once.
    """
    def save(summary: Mapping[str, Any], staging: Path) -> None:
        save_model(model, str(staging / WEIGHTS), force_contiguous=True)  # handles tied weights (GPT-2 lm_head)
        atomic_write_json(staging / "summary.json", summary)

    def load(folder: Path) -> dict[str, Any]:
        load_model(model, str(folder / WEIGHTS))
        return json.loads((folder / "summary.json").read_text())

    got = load_or_build(kind, config, lambda: dict(train_fn(model) or {}), save, load, rebuilding="retraining")
    return {"trained": got.built, "folder": got.folder, **got.value}
