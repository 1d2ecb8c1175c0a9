"""Small real "own data" files for the tests: a text file, a folder of text files, a folder saved by
``datasets``, and ImageFolder trees of PNGs (grey and colour). Each is made in a given folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Real English prose (not generated filler): the tokenizer and the GPT get something to learn.
PROSE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
         "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
         "it was the season of Darkness, it was the spring of hope, it was the winter of despair.\n")


def write_text_file(path: Path, chars: int = 30_000) -> Path:
    """A UTF-8 ``.txt`` of about ``chars`` characters of prose, numbered paragraphs (so no two are equal)."""
    paragraphs, size, i = [], 0, 0
    while size < chars:
        paragraphs.append(f"Chapter {i}. {PROSE}")
        size += len(paragraphs[-1]) + 1
        i += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(paragraphs), encoding="utf-8")
    return path


def write_text_folder(folder: Path, files: int = 3, chars: int = 4_000) -> Path:
    """A folder of ``files`` text files (one in a sub-folder, plus a file that is not text)."""
    for i in range(files):
        write_text_file(folder / ("part" if i == files - 1 else "") / f"{i:02d}.txt", chars)
    (folder / "notes.bin").write_bytes(b"\x00\xff not text, ignored")
    return folder


def write_saved_dataset(folder: Path, rows: int = 40) -> Path:
    """A ``datasets.Dataset`` with a ``text`` and a ``label`` column, written with ``save_to_disk``."""
    from datasets import Dataset

    Dataset.from_dict({"text": [f"Row {i}. {PROSE}" for i in range(rows)], "label": list(range(rows))}) \
        .save_to_disk(str(folder))
    return folder


def write_image_folder(root: Path, classes: int = 3, per_class: int = 20, size: int = 16, rgb: bool = False,
                       seed: int = 0) -> Path:
    """An ImageFolder tree ``root/class_k/NNN.png``: class ``k`` is a bright bar at angle k (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size)).astype(np.uint8)
            offset = int(rng.integers(-2, 3))
            if k % 3 == 0:
                pixels[size // 2 + offset, 2:-2] = 255
            elif k % 3 == 1:
                pixels[2:-2, size // 2 + offset] = 255
            else:
                np.fill_diagonal(pixels, 255)
            image = Image.fromarray(pixels, mode="L")
            if rgb:
                image = Image.merge("RGB", (image, image.point(lambda v: v // 2), image))
            image.save(folder / f"{i:03d}.png")
    return root
