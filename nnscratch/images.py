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
        what = "a symbolic link to nothing" if os.path.islink(path) else "no such file"
        raise ImageError(f"{path}: {what}") from None
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
# gradient, darker corners), perhaps specks, a frame or a table edge. Each of
# these, read as "item", used to stretch the crop to the whole picture and
# shrink the item to a few pixels (``scripts/check_photos.py``: with sensor
# noise, a lighting gradient, a speck or a frame, 9-26% of 200 test items made
# into photos were classified right). So:
#
# 1. look at a coarse copy (at most COARSE pixels a side, block means), where
#    pixel noise has averaged away;
# 2. a frame (rings of one level all round, then rings of another, with more
#    than one level inside) is not part of the picture: set it aside;
# 3. model the background as a smooth surface, a quadratic in x and y fitted to
#    the pixels of an outer band that lie near the border's median (refitted as
#    the fit improves), so uneven light is subtracted, not mistaken for the
#    item, and a faint item in the middle is not fitted into the background;
# 4. the item is what departs from the surface: if more departs below it than
#    above, the item is darker than its background: invert;
# 5. the item is what stands clearly above the surface (THRESHOLD, or 5 noise
#    sigmas of the coarse copy), in connected pieces; pieces with under 2% of
#    the largest one's mass are specks, and a piece hugging the border (within
#    _EDGE of it, along most of one side: a table edge, a shadow, a bar) is not
#    the item either, unless nothing else is left;
# 6. look again at the item's box (and a block around it) on a finer grid,
#    where a small item's edges are found to a few pixels instead of a block;
# 7. crop the full-size picture to the item, subtract the surface, scale the
#    longer side to 28 pixels, centre it, and stretch its levels so that the
#    brightest pixel is white, as in Fashion-MNIST.

COARSE = 128
THRESHOLD = 0.04  # of full scale: the least an item must stand above the background
_SPECK = 0.02     # pieces with less of the largest one's mass are specks
_BAND = 0.15      # the outer band the background is fitted on (of the shorter side)
_EDGE = 0.2       # how close to the border a piece must stay to be a band, not the item
_FINE = 40        # items under this many coarse pixels across are looked at again, finer


def _photo_to_fashion_mnist(gray: np.ndarray, invert: str) -> np.ndarray:
    from PIL import Image

    factor = max(1, -(-max(gray.shape) // COARSE))
    coarse = _block_mean(gray, factor)
    top, bottom, left, right = _inside_frame(coarse)
    view = coarse[top:bottom, left:right]
    y = _centres(top * factor, bottom - top, factor, factor)  # the view's pixel centres
    x = _centres(left * factor, right - left, factor, factor)
    surface, noise = _background_surface(view, y, x)
    departure = view - _surface_at(surface, y, x)
    limit = max(THRESHOLD, 5 * noise)  # how far a pixel must depart to be the item's
    if invert == "yes" or (invert == "auto" and _darker_item(departure, limit)):
        gray, departure = 1.0 - gray, -departure
        surface = -surface
        surface[0] += 1.0  # the surface of 1 - gray
    pieces = _item_pieces(departure > limit, departure)
    # Full-size pixels: each coarse pixel covers factor x factor of them. With no
    # item found, the whole picture inside the frame (predict warns that it
    # looks blank).
    r0, r1 = top * factor, min(bottom * factor, gray.shape[0])
    c0, c1 = left * factor, min(right * factor, gray.shape[1])
    if pieces.any():
        rows, cols = np.nonzero(pieces)
        r0, r1, c0, c1 = _finer_box(gray, surface, noise, factor, (
            (top + rows.min()) * factor, min((top + rows.max() + 1) * factor, gray.shape[0]),
            (left + cols.min()) * factor, min((left + cols.max() + 1) * factor, gray.shape[1])))
    crop = _on_black(gray[r0:r1, c0:c1], _surface_at(surface, _centres(r0, r1 - r0, 1, factor),
                                                     _centres(c0, c1 - c0, 1, factor)))
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


def _uniform(pixels: np.ndarray, level: float, share: float) -> bool:
    """Whether ``share`` of the pixels lie within 0.05 of ``level``."""
    return float(np.mean(np.abs(pixels - level) < 0.05)) >= share


def _inside_frame(coarse: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the picture inside a frame, or of all of it.

    A frame is a run of rings (ring k: the pixels k steps in from the edge) all at
    one level, followed by rings mostly at another level, the background (an item
    may touch the frame); a ring or two between them may blend both (block means
    across the edge). What the rings enclose must not be all one level: then the
    "frame" was the background around a plain item. (Not recognised: a frame of
    two colours, a mat inside a frame, bars on two sides only.)"""
    h, w = coarse.shape

    def ring(k: int) -> np.ndarray:
        return _border(coarse[k:h - k, k:w - k])

    level = float(np.median(ring(0)))
    if min(h, w) < 8 or not _uniform(ring(0), level, 0.95):
        return 0, h, 0, w
    # At most 8% of the shorter side: a wider "frame" is more likely the margin
    # around an item of one colour whose outline is a rectangle.
    for k in range(1, max(2, round(0.08 * min(h, w)))):
        if _uniform(ring(k), level, 0.95):
            continue  # still the frame
        for j in (k, k + 1, k + 2):  # the background's first ring: this one, or past blends
            inner = float(np.median(ring(j)))
            if abs(inner - level) > 0.1 and all(_uniform(ring(i), inner, 0.75) for i in (j, j + 1)) \
                    and not _uniform(coarse[j:h - j, j:w - j], inner, 0.95):
                return j, h - j, j, w - j
        break
    return 0, h, 0, w


def _centres(start: int, count: int, step: int, factor: int) -> np.ndarray:
    """The centres of ``count`` pixels, each ``step`` full-size pixels wide, from
    full-size pixel ``start``, in the background surface's units (COARSE pixels
    of the coarse copy, whose pixels are ``factor`` full-size ones wide), so that
    one fit serves the coarse copy, a finer grid and the full-size picture."""
    return (start + (np.arange(count) + 0.5) * step) / factor / COARSE


def _surface_at(surface: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The quadratic surface (coefficients of 1, x, y, x^2, xy, y^2) at rows y x columns x."""
    y, x = y[:, None], x[None, :]
    return (surface[0] + surface[1] * x + surface[2] * y + surface[3] * x * x
            + surface[4] * x * y + surface[5] * y * y)


def _background_surface(view: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients of the background's quadratic surface over ``view`` (whose
    pixel centres are rows ``y`` and columns ``x``), and the noise (a robust
    standard deviation) of the background pixels around it. Fitted on the outer
    band only, to the pixels near the border's median level and then near the fit."""
    band = max(1, round(_BAND * min(view.shape)))
    outer = np.ones(view.shape, bool)
    outer[band:-band, band:-band] = False
    yy, xx = np.broadcast_arrays(y[:, None], x[None, :])
    yy, xx = yy[outer], xx[outer]
    terms = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=1)
    values = view[outer]
    level = float(np.median(_border(view)))
    surface = np.array([level, 0.0, 0.0, 0.0, 0.0, 0.0])
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


def _darker_item(departure: np.ndarray, limit: float) -> bool:
    """Whether more of the picture departs (by over ``limit``) below the background
    than above it."""
    below = float(np.sum(-departure[departure < -limit]))
    above = float(np.sum(departure[departure > limit]))
    return below > above


def _item_pieces(mask: np.ndarray, departure: np.ndarray) -> np.ndarray:
    """``mask`` without specks and bands along the border (see step 5 above)."""
    labels = _label(mask)
    count = int(labels.max())
    if count == 0:
        return mask
    mass = np.bincount(labels.reshape(-1), weights=np.clip(departure, 0, None).reshape(-1),
                       minlength=count + 1)[1:]
    keep = mass >= _SPECK * mass.max()
    bands = keep & _hugs_the_border(labels, count)
    if bands.any() and (keep & ~bands).any():
        keep &= ~bands
    return keep[labels - 1] & (labels > 0)


def _hugs_the_border(labels: np.ndarray, count: int) -> np.ndarray:
    """For pieces 1..count: whether the piece stays within _EDGE of the border
    and runs along at least 80% of one side (a table edge, a shadow, a frame)."""
    h, w = labels.shape
    rows, cols = np.indices((h, w))
    inward = np.minimum(np.minimum(rows, h - 1 - rows) / h, np.minimum(cols, w - 1 - cols) / w)
    deepest = np.zeros(count + 1)
    np.maximum.at(deepest, labels.reshape(-1), inward.reshape(-1))
    along = np.zeros(count + 1)
    for edge, length in ((labels[0], w), (labels[-1], w), (labels[:, 0], h), (labels[:, -1], h)):
        covered = np.bincount(edge, minlength=count + 1) / length
        along = np.maximum(along, covered)
    return ((deepest <= _EDGE) & (along >= 0.8))[1:]


def _finer_box(gray: np.ndarray, surface: np.ndarray, noise: float, factor: int,
               box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The item's box (r0, r1, c0, c1 in full-size pixels) found again on a finer
    grid: the coarse ``box`` and a block around it, at most COARSE pixels a side.
    A coarse box is up to a block too wide each way, which for a small item is
    much of its size. The same surface; the noise shrinks with the pixels."""
    r0, r1, c0, c1 = box
    if max(r1 - r0, c1 - c0) >= _FINE * factor:
        return box  # a block is a small part of the item (and whole blocks keep faint edges)
    r0, c0 = max(r0 - factor, 0), max(c0 - factor, 0)
    r1, c1 = min(r1 + factor, gray.shape[0]), min(c1 + factor, gray.shape[1])
    step = max(1, -(-max(r1 - r0, c1 - c0) // COARSE))
    if step >= factor:
        return box
    fine = _block_mean(gray[r0:r1, c0:c1], step)
    departure = fine - _surface_at(surface, _centres(r0, fine.shape[0], step, factor),
                                   _centres(c0, fine.shape[1], step, factor))
    # (block means of step x step pixels: the noise is factor / step times the coarse copy's)
    pieces = _item_pieces(departure > max(THRESHOLD, 5 * noise * factor / step), departure)
    if not pieces.any():
        return box
    rows, cols = np.nonzero(pieces)
    return (r0 + rows.min() * step, min(r0 + (rows.max() + 1) * step, r1),
            c0 + cols.min() * step, min(c0 + (cols.max() + 1) * step, c1))


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
