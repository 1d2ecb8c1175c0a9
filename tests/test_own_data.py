"""Your own data through the batch runner (marker ``notebooks``): notebook 02 pretrains its GPT on a
text file the test writes (``-p text_corpus=...``), notebook 03 fine-tunes on an image folder of
colour PNGs the test writes (``-p target_dataset=...``), both in smoke, with no change to either
notebook (the knobs travel in ``OVERRIDES``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from owndata import write_image_folder, write_text_file

ROOT = Path(__file__).resolve().parent.parent


def _run(notebook: str, params: list[str], out: Path, store: Path) -> dict:
    """``python -m helpers.run NOTEBOOK --profile smoke -p ...``; the notebook's results file."""
    args = [sys.executable, "-m", "helpers.run", notebook, "--profile", "smoke", "--out", str(out), "-p", "threads=1"]
    for item in params:
        args += ["-p", item]
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "WORKBOOK_STORE": str(store)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(next(out.glob(f"{notebook}_*.results.json")).read_text())


def _manifests(store: Path, kind: str) -> list[dict]:
    return [json.loads(m.read_text())["config"] for m in (store / kind).glob("*/manifest.json")]


@pytest.mark.notebooks
def test_notebook_02_pretrains_on_a_text_file(tmp_path, shared_store, monkeypatch):
    book = write_text_file(tmp_path / "my corpus" / "book.txt", 30_000)  # a space in the path, too
    # seq_len=64: notebook 02 samples 20 new tokens after a prompt, which with smoke's 300-token
    # vocabulary can pass smoke's 32 positions on a text with other words than the Python docs
    recorded = _run("02", [f"text_corpus={book}", "seq_len=64"], tmp_path / "run", shared_store)
    assert recorded["params"]["text_corpus"] == str(book)
    monkeypatch.setenv("WORKBOOK_STORE", str(shared_store))
    from helpers import data

    mine = data.user_corpus(book, recorded["params"]["text_chars"])
    assert "It was the best of times" in mine
    sha = hashlib.sha256(mine.encode()).hexdigest()
    assert any(c.get("corpus_sha256") == sha for c in _manifests(shared_store, "gpt-pretrain")), \
        "no GPT checkpoint was pretrained on the text file"
    assert recorded["metrics"]["gpt_val_ppl"] > 1


@pytest.mark.notebooks
def test_notebook_03_fine_tunes_on_an_image_folder(tmp_path, shared_store):
    folder = write_image_folder(tmp_path / "shapes", classes=3, per_class=20, size=16, rgb=True)
    # convergence_budget=10: each class's labelled pool holds 12 of its 20 images
    recorded = _run("03", [f"target_dataset={folder}", "convergence_budget=10"], tmp_path / "run", shared_store)
    assert recorded["params"]["target_dataset"] == str(folder)
    assert any(c["source"] == str(folder) for c in _manifests(shared_store, "image-folder"))
    table = recorded["tables"]["sample_efficiency"]
    accuracy = [row[table["columns"].index("test_acc_mean")] for row in table["rows"]]
    assert accuracy and all(0 <= acc <= 1 for acc in accuracy)
