"""How well `nnscratch predict` copes with photo-like pictures of the test items.

    python scripts/check_photos.py MODEL.npz|RUN_DIR [--items 200] [--save-examples DIR]

Each of the first ``--items`` test images (from index 1000 on) is enlarged to
400x400, drawn as a dark, colour-tinted item on a light 600x800 background and
saved as a JPEG (quality 85), as a phone photo of a garment on a sheet might
look. Each kind of trouble a photo brings is one row: a clean background,
sensor noise (sigma 3 and 6 gray levels), a lighting gradient, darker corners,
one or three dark specks, a dark frame, a close-up (the picture only as tall
as the item, which touches its top and bottom edges), a low-contrast item (a
gray item 25 levels darker than a gray background) and a light item on a dark
background (Fashion-MNIST's own polarity), the last three with noise (sigma
6). Every picture goes through the
same reading and conversion as `nnscratch predict` (``nnscratch.images``), and
the script prints the model's top-1 accuracy per kind, next to its accuracy on
the same items as raw 28x28 test images.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import nnscratch as nn
from nnscratch import images
from nnscratch.datasets import load_fashion_mnist_split

KINDS = ("clean", "noise 3", "noise 6", "gradient", "dark corners", "1 speck", "3 specks",
         "frame", "close-up", "low contrast", "light on dark")
FIRST = 1000  # test items from here on


def photo(item: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """A JPEG of ``item`` (28x28 uint8, light on black) as a dark item on a light
    background, with one kind of trouble."""
    shape = np.asarray(Image.fromarray(item).resize((400, 400), Image.BICUBIC)) / 255.0
    h, w = (400, 520) if kind == "close-up" else (800, 600)
    oy, ox = (0, 60) if kind == "close-up" else (200, 100)
    y, x = np.mgrid[0:h, 0:w]
    background = np.full((h, w), {"low contrast": 150.0, "light on dark": 30.0}.get(kind, 235.0))
    if kind != "clean" and kind != "frame":
        background += rng.normal(0, 3 if kind == "noise 3" else 6, (h, w))
    if kind == "gradient":
        background += -35 + 40 * x / w
    if kind == "dark corners":
        background -= 30 * (((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 2)) ** 2)
    rgb = np.repeat(background[..., None], 3, axis=2)
    colour = rng.uniform(20, 120, 3)
    shading = 1.6 - 0.6 * shape[..., None]  # darker where the item is brighter in the data
    if kind == "low contrast":
        colour, shading = np.full(3, 125.0), 1.0 + 0.1 * (1 - shape[..., None])
    if kind == "light on dark":
        colour, shading = rng.uniform(150, 220, 3), 0.5 + 0.5 * shape[..., None]
    cover = np.minimum(shape * 3, 1)[..., None]  # where the item is (its faint edge blends)
    region = rgb[oy:oy + 400, ox:ox + 400]
    region[:] = region * (1 - cover) + colour * shading * cover
    if kind in ("1 speck", "3 specks"):
        rgb[10:14, 10:14] = 20
    if kind == "3 specks":
        rgb[700:706, 550:556] = 40
        rgb[50:53, 500:503] = 30
    if kind == "frame":
        rgb[:15] = rgb[-15:] = 10
        rgb[:, :15] = rgb[:, -15:] = 10
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model.npz, or a finished run's folder")
    parser.add_argument("--items", type=int, default=200, help="test items to use (default 200)")
    parser.add_argument("--save-examples", type=Path, metavar="DIR",
                        help="also write the first 12 converted images of each kind as one PNG")
    args = parser.parse_args()
    path = args.model / "model.npz" if args.model.is_dir() else args.model
    if not 1 <= args.items <= 10000 - FIRST:
        parser.error(f"--items must be 1 to {10000 - FIRST}")
    try:
        model = nn.load(path)
        x, y = load_fashion_mnist_split("test", verbose=False)
    except (nn.ModelFileError, nn.DataError, OSError) as exc:
        print(f"check_photos: error: {exc}", file=sys.stderr)
        return 1
    idx = np.arange(FIRST, FIRST + args.items)
    scores = {"raw 28x28": float((model.predict(x[idx]).argmax(1) == y[idx]).mean())}
    for kind in KINDS:
        rng = np.random.default_rng(0)
        converted = []
        for i in idx:
            with Image.open(io.BytesIO(photo(x[i], kind, rng))) as img:
                img.load()
                converted.append(images.to_fashion_mnist(images._grayscale(img)))
        batch = np.stack(converted)
        scores[kind] = float((model.predict(batch).argmax(1) == y[idx]).mean())
        if args.save_examples is not None:
            args.save_examples.mkdir(parents=True, exist_ok=True)
            strip = np.hstack(list(batch[:12]))
            Image.fromarray(strip).resize((strip.shape[1] * 3, 28 * 3), Image.NEAREST).save(
                args.save_examples / f"{kind.replace(' ', '-')}.png")
    width = max(len(k) for k in scores)
    print(f"{path}: top-1 accuracy on {args.items} test items (from index {FIRST})")
    for kind, score in scores.items():
        print(f"  {kind:<{width}}  {score:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
