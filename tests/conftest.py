"""Shared test set-up: no network, a throw-away store, the repository root at hand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETGUARD = Path(__file__).resolve().parent / "netguard"

# Every child process (papermill kernels too) imports tests/netguard/sitecustomize.py first.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  MPLBACKEND="Agg", TQDM_MININTERVAL="5")
# Under pytest-xdist (`make test` runs `-n 2`), N workers share the cores: each gets cores // N
# threads (papermill kernels inherit it), so N test processes do not fight over the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(NETGUARD))
import sitecustomize  # noqa: E402,F401  (the guard, in this process too)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty cache/checkpoint store for one test (so tests never touch data/store)."""
    path = tmp_path / "store"
    monkeypatch.setenv("WORKBOOK_STORE", str(path))
    return path


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    """Keep results files written by helpers in the test's own folder."""
    monkeypatch.setenv("WORKBOOK_RESULTS", str(tmp_path / "test.results.json"))
    import helpers.results as results
    monkeypatch.setattr(results, "_current", None)
    import helpers.data.corpora as corpora  # resolve(text_corpus=...) sets the text track's corpus: undo it
    monkeypatch.setattr(corpora, "_active_text_corpus", None)


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Path:
    """One store for every notebook execution of a test session (smoke, quick, student, browser):
    what one notebook pretrains, the next loads, as for a learner running them in order. Under
    pytest-xdist the workers share it too; the store's build locks make each checkpoint once."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    path = base / "shared-store"
    path.mkdir(exist_ok=True)
    return path


_ORDER = {"notebooks": 1, "browser": 2, "claims": 3}  # unit tests (0) first, the slowest last


def pytest_collection_modifyitems(items):
    """Unit tests first, then smoke notebooks, the browser (on the store they filled), quick claims."""
    def rank(item) -> int:
        return max((_ORDER.get(mark.name, 0) for mark in item.iter_markers()), default=0)
    items.sort(key=rank)  # stable: the order within a group is kept


def write_notebook(nb, path: Path, prefix: str = "cell") -> Path:
    """Give a test-made nbformat notebook stable cell ids and the python3 kernel, and write it."""
    import nbformat

    for i, cell in enumerate(nb.cells):
        cell.id = f"{prefix}-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path
