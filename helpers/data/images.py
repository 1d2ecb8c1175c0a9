"""Generated glyph images: the large, free pretraining set (letters and symbols, never digits)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import cached, load_tensors, save_tensors

Images = tuple[torch.Tensor, torch.Tensor]  # (images float32 [N,C,H,W] in [0,1], labels int64 [N])

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

