"""Turning a user's picture into a Fashion-MNIST-like 28x28 uint8 image.

Fashion-MNIST shows a light item centred on a black background, with its
longer side filling the 28 pixels. Photos are usually the opposite: a dark
item on a light background, of any size. So: read as grayscale (transparent
pixels become the background: black behind a light item, white behind a dark
one), fix the polarity, crop to the item, scale the longer
side to 28 pixels and centre it. A picture that is already 28x28 is taken to
be in Fashion-MNIST's framing: only its polarity and a gray background are fixed.

Pillow does the decoding (it is a dependency of matplotlib, so it is always
installed with nnscratch).
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np

SIDE = 28
# Pictures are shrunk to this before any float work (bounded memory, same 28x28 result).
MAX_SIDE = 1024


class ImageError(ValueError):
    """A file that cannot be read as an image."""


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """Pixels of an image file as float64 in [0, 1] (0 = black), shape (H, W),
    upright as a viewer shows it, transparent pixels filled with the
    background (see ``_over_background``), at most ``MAX_SIDE`` pixels on the
    longer side."""
    from PIL import Image, UnidentifiedImageError

    try:
        info = os.stat(path)
        mode = info.st_mode
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise ImageError(f"{path!r}: not a usable path ({exc})") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a directory, not an image")
    if not stat.S_ISREG(mode):  # a FIFO or a device: opening it could wait forever
        raise ImageError(f"{path}: not a regular file (a pipe or a device?)")
    if info.st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow's own warning for a very large image does not say which file.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(path)
            except Image.DecompressionBombWarning:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
                warnings.warn(f"{path}: a very large image ({img.size[0]}x{img.size[1]} pixels);"
                              " decoding it takes much memory", stacklevel=3)
        with img:
            # JPEG can decode at 1/2, 1/4 or 1/8 size directly: far less memory
            # for a phone photo, and we only need 28 pixels in the end.
            img.draft("L", (MAX_SIDE, MAX_SIDE))
            img.load()
            gray = _grayscale(img)
    except Image.DecompressionBombError:  # Pillow refuses twice its warning's size
        raise ImageError(f"{path}: image too large to decode safely "
                         f"(more than {2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt image data
        raise ImageError(f"{path}: unreadable image ({exc})") from None
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ImageError(f"{path}: empty image")
    return gray


def _grayscale(img) -> np.ndarray:
    from PIL import Image, ImageOps

    # Cameras store pixels as the sensor saw them and an EXIF tag saying how to
    # turn them; a sideways coat would be classified as something else.
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16-bit or float pixels: Pillow's 8-bit conversions would clip them.
        raw = np.asarray(img)
        gray = raw.astype(np.float64)
        # The range is judged on finite pixels: one inf must not dim the rest to black.
        top = float(np.max(gray, initial=0.0, where=np.isfinite(gray)))
        if img.mode == "F":  # floats: taken as 0-1 if they fit, else as 0-255
            gray /= 1.0 if top <= 1.0 else 255.0
        elif img.mode == "I":  # 32-bit integers: the smallest usual range they fit
            gray /= 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        else:
            gray /= 65535.0
        gray = np.clip(np.nan_to_num(gray), 0.0, 1.0)
        if "transparency" in img.info:  # one gray value marks the transparent pixels
            gray = _over_background(gray, (raw != img.info["transparency"]).astype(np.float64))
        return _block_mean(gray, -(-max(gray.shape) // MAX_SIDE))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        la = img.convert("RGBA").convert("LA")  # palette transparency needs RGBA first
        if max(la.size) > MAX_SIDE:
            la.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
        pixels = np.asarray(la, dtype=np.float64) / 255.0
        return _over_background(pixels[..., 0], pixels[..., 1])
    img = img.convert("L")
    if max(img.size) > MAX_SIDE:  # shrink while still 1 byte a pixel
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float64) / 255.0


def _over_background(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Fill transparent pixels with the background the item implies: black
    behind a light item (a cut-out like Fashion-MNIST's), white behind a dark
    one (like a photo). The item is what is mostly opaque."""
    if alpha.min() >= 1.0:
        return gray
    opaque = alpha > 0.5
    light_item = bool(opaque.any()) and float(gray[opaque].mean()) > 0.5
    background = 0.0 if light_item else 1.0
    return gray * alpha + background * (1.0 - alpha)


def looks_blank(image: np.ndarray) -> bool:
    """True for a (28, 28) uint8 image with no item: under 10% contrast."""
    return int(image.max()) - int(image.min()) < 26


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def to_fashion_mnist(gray: np.ndarray, invert: str = "auto") -> np.ndarray:
    """A (28, 28) uint8 image in Fashion-MNIST's convention from grayscale pixels.

    ``invert``: "yes", "no", or "auto" (invert when the background is brighter
    than mid-gray: for a 28x28 picture the mean of its border; for any other
    the median of its border, inside any frame).
    """
    if invert not in ("auto", "yes", "no"):
        raise ValueError(f"invert must be 'auto', 'yes' or 'no', got {invert!r}")
    if gray.shape == (SIDE, SIDE):
        if invert == "yes" or (invert == "auto" and _border(gray).mean() > 0.5):
            gray = 1.0 - gray
        # Already 28x28: taken to be framed as Fashion-MNIST is, so not cropped or
        # scaled; but a gray background (border median above 10%; 6 of Fashion-MNIST's
        # 10k test images have one) is taken down to black: the models never saw one
        # (measured in review: 13.5% accuracy on test images put on gray 90).
        background = float(np.median(_border(gray)))
        if background > 0.1:
            gray = _on_black(gray, background)
        return (np.clip(gray, 0, 1) * 255).round().astype(np.uint8)
    return _photo_to_fashion_mnist(gray, invert)


def _on_black(gray: np.ndarray, background: float | np.ndarray) -> np.ndarray:
    """Levels stretched so that ``background`` becomes 0 (black) and 1 stays 1."""
    return np.clip(gray - background, 0, None) / np.maximum(1 - background, 1e-6)


# ---- a photo: find the item, then frame it as Fashion-MNIST does --------------------
#
# A photo is not a clean cut-out: its background has noise, uneven light (a
# gradient, darker corners), perhaps specks or a frame. Each of these, read as
# "item", used to stretch the crop to the whole picture and shrink the item to
# a few pixels (``scripts/check_photos.py``: with sensor noise, a lighting
# gradient, a speck or a frame, 9-26% of 200 test items made into photos were
# classified right, against 89-90% now). So:
#
# 1. look at a coarse copy (at most COARSE pixels a side, block means), where
#    pixel noise has averaged away;
# 2. a frame (a band of one level all round, with a band of another inside it)
#    is not part of the picture: set it aside;
# 3. the background is what the border shows (its median: the item may touch
#    an edge or two); a light background means a dark item: invert;
# 4. model the background as a smooth surface, a quadratic in x and y fitted to
#    the pixels of an outer band that lie near it (refitted as the fit improves),
#    so uneven light is subtracted, not mistaken for the item, and a faint
#    item in the middle is not fitted into the background;
# 5. the item is what stands clearly above the surface (THRESHOLD, or 5 noise
#    sigmas of the coarse copy), in connected pieces; pieces with under 2% of the largest
#    one's mass are specks, not the item;
# 6. crop the full-size picture to those pieces, subtract the surface, scale
#    the longer side to 28 pixels, centre it, and stretch its levels so that
#    the brightest pixel is white, as in Fashion-MNIST.

COARSE = 128
THRESHOLD = 0.04  # of full scale: the least an item must stand above the background
_SPECK = 0.02
_BAND = 0.15  # the outer band the background is fitted on, as a fraction of the shorter side


def _photo_to_fashion_mnist(gray: np.ndarray, invert: str) -> np.ndarray:
    from PIL import Image

    factor = max(1, -(-max(gray.shape) // COARSE))
    coarse = _block_mean(gray, factor)
    top, bottom, left, right = _inside_frame(coarse)
    if invert == "yes" or (invert == "auto"
                           and np.median(_border(coarse[top:bottom, left:right])) > 0.5):
        gray, coarse = 1.0 - gray, 1.0 - coarse
    rows, cols = range(top, bottom), range(left, right)  # in coarse pixels, inside any frame
    surface, noise = _background_surface(coarse, rows, cols)
    excess = coarse[top:bottom, left:right] - _evaluate(surface, rows, cols, 1)
    pieces = _item_pieces(excess > max(THRESHOLD, 5 * noise), excess)
    if pieces.any():
        found_rows, found_cols = np.nonzero(pieces)
        top, bottom = top + found_rows.min(), top + found_rows.max() + 1
        left, right = left + found_cols.min(), left + found_cols.max() + 1
    # Back to full-size pixels: each coarse pixel covers factor x factor of them.
    # (With no item found, the whole picture inside the frame: predict warns that
    # it looks blank.) Cropping to whole blocks keeps an item's faint edges: a
    # crop refined to the full-size pixels standing out lost them (measured on
    # 400 items of check_photos.py's kinds: 0.7-1.7 points worse in 4 of 6 kinds,
    # the same in one, 0.5 better in one).
    r0, r1 = top * factor, min(bottom * factor, gray.shape[0])
    c0, c1 = left * factor, min(right * factor, gray.shape[1])
    crop = _on_black(gray[r0:r1, c0:c1], _evaluate(surface, range(r0, r1), range(c0, c1), factor))
    h, w = crop.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray((crop * 255).round().astype(np.uint8)).resize(size, Image.LANCZOS)
    canvas = np.zeros((SIDE, SIDE), np.uint8)
    top, left = (SIDE - size[1]) // 2, (SIDE - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = np.asarray(img)
    if pieces.any() and canvas.max() > 0:
        # Fashion-MNIST's items reach full brightness (99% of its test images have
        # a pixel of 254 or 255); a faint item in a photo is stretched to match.
        canvas = (canvas * (255 / canvas.max())).round().astype(np.uint8)
    return canvas


def _block_mean(gray: np.ndarray, factor: int) -> np.ndarray:
    """Means of factor x factor blocks (the last ones padded by repeating the edge)."""
    if factor == 1:
        return gray
    h, w = (-(-n // factor) * factor for n in gray.shape)
    padded = np.pad(gray, ((0, h - gray.shape[0]), (0, w - gray.shape[1])), mode="edge")
    return padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _uniform(ring: np.ndarray, level: float, share: float) -> bool:
    """Whether ``share`` of the ring lies within 0.05 of ``level``."""
    return float(np.mean(np.abs(ring - level) < 0.05)) >= share


def _inside_frame(coarse: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the picture inside a frame, or of all of it.

    A frame is a run of rings (ring k: the pixels k steps in from the edge) all at
    one level, followed by a ring uniformly at another level, the background; a
    ring between the two may be a blend of both (block means across the edge). A
    uniform border followed by anything else (the item, clutter) is no frame."""
    h, w = coarse.shape

    def ring(k: int) -> np.ndarray:
        return _border(coarse[k:h - k, k:w - k])

    level = float(np.median(ring(0)))
    if min(h, w) < 8 or not _uniform(ring(0), level, 0.95):
        return 0, h, 0, w
    for k in range(1, min(h, w) // 4):
        if _uniform(ring(k), level, 0.95):
            continue  # still the frame
        for j in (k, k + 1):  # the background's first ring: this one, or past a blend
            inner = float(np.median(ring(j)))
            if abs(inner - level) > 0.1 and all(_uniform(ring(i), inner, 0.9) for i in (j, j + 1)):
                return j, h - j, j, w - j
        break
    return 0, h, 0, w


def _terms(rows: range, cols: range, factor: int) -> list[np.ndarray]:
    """1, x, y, x^2, xy, y^2 at the centres of these pixels of a picture whose
    coarse copy is ``factor`` times smaller, in that copy's coordinates (so one
    fit serves both sizes)."""
    y = ((np.arange(rows.start, rows.stop) + 0.5) / factor / COARSE)[:, None]
    x = ((np.arange(cols.start, cols.stop) + 0.5) / factor / COARSE)[None, :]
    one = np.ones((len(rows), len(cols)))
    return [one, x * one, y * one, x * x * one, x * y, y * y * one]


def _evaluate(surface: np.ndarray, rows: range, cols: range, factor: int) -> np.ndarray:
    """The background surface over these pixels."""
    return sum(c * t for c, t in zip(surface, _terms(rows, cols, factor)))


def _background_surface(coarse: np.ndarray, rows: range, cols: range) -> tuple[np.ndarray, float]:
    """Coefficients of the background's quadratic surface over ``rows`` x ``cols``
    of the coarse picture, and the noise (a robust standard deviation) of the
    background pixels around it. Fitted on the outer band only."""
    view = coarse[rows.start:rows.stop, cols.start:cols.stop]
    band = max(1, round(_BAND * min(view.shape)))
    outer = np.ones(view.shape, bool)
    outer[band:-band, band:-band] = False
    terms = np.stack([t[outer] for t in _terms(rows, cols, 1)], axis=1)
    values = view[outer]
    level = float(np.median(_border(view)))
    surface = np.zeros(terms.shape[1])
    surface[0] = level
    near = np.abs(values - level) < 0.05
    noise = 0.0
    for _ in range(4):  # fit, take the pixels close to the fit, fit again
        if near.sum() < terms.shape[1] * 4:
            break
        surface = np.linalg.lstsq(terms[near], values[near], rcond=None)[0]
        residual = values - terms @ surface
        noise = 1.4826 * float(np.median(np.abs(residual[near])))
        near = np.abs(residual) < max(0.05, 4 * noise)
    return surface, noise


def _item_pieces(mask: np.ndarray, excess: np.ndarray) -> np.ndarray:
    """``mask`` without specks (see step 5 above)."""
    labels = _label(mask)
    count = int(labels.max())
    if count == 0:
        return mask
    mass = np.bincount(labels.reshape(-1), weights=np.clip(excess, 0, None).reshape(-1),
                       minlength=count + 1)[1:]
    keep = mass >= _SPECK * mass.max()
    return keep[labels - 1] & (labels > 0)


def _label(mask: np.ndarray) -> np.ndarray:
    """Connected pieces of ``mask`` (8 neighbours), numbered 1..n; 0 elsewhere."""
    h, w = mask.shape
    ids = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:  # each pixel takes the largest id among its neighbours until none changes
        padded = np.pad(ids, 1)
        grown = ids.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.maximum(grown, padded[dy:dy + h, dx:dx + w], out=grown)
        grown[~mask] = 0
        if np.array_equal(grown, ids):
            break
        ids = grown
    return np.where(mask, np.searchsorted(np.unique(ids[mask]), ids) + 1, 0)


def load_image(path: str | os.PathLike, invert: str = "auto") -> np.ndarray:
    """Read ``path`` and convert it for the model: (28, 28) uint8."""
    return to_fashion_mnist(read_grayscale(path), invert)
