"""Reading a user's picture: orientation, bit depth, transparency, size.

All images are made here with Pillow; no model is needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnscratch.images import MAX_SIDE, ImageError, load_image, looks_blank, read_grayscale


def _item(h: int = 40, w: int = 24) -> np.ndarray:
    """A light, asymmetric item on black: taller than wide, brighter at the top."""
    img = np.zeros((h, w), np.uint8)
    img[4:h - 4, 6:w - 6] = np.linspace(250, 90, h - 8, dtype=np.uint8)[:, None]
    return img


def _with_orientation(pixels: np.ndarray, orientation: int, path: Path, **save) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    Image.fromarray(pixels).save(path, exif=exif, **save)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = _item()
    # Orientation 6: the viewer turns the stored pixels 90 degrees clockwise,
    # so a camera held upright stores them turned counter-clockwise.
    stored = np.rot90(upright)
    _with_orientation(stored, 6, tmp_path / "turned.png")
    assert np.array_equal(read_grayscale(tmp_path / "turned.png"), upright / 255.0)
    # The same as a phone's JPEG (lossy, so compared loosely).
    _with_orientation(stored, 6, tmp_path / "turned.jpg", quality=95)
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    turned, plain = read_grayscale(tmp_path / "turned.jpg"), read_grayscale(tmp_path / "upright.jpg")
    assert turned.shape == plain.shape == upright.shape
    assert np.abs(turned - plain).mean() < 0.02


def test_16_bit_grayscale_with_transparency_is_not_clipped(tmp_path: Path) -> None:
    pixels = _item().astype(np.uint16) * 257
    pixels[0, 0] = 12345  # the transparent value, used by one pixel
    Image.fromarray(pixels).save(tmp_path / "deep.png", transparency=12345)
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I") and "transparency" in img.info
    expected = pixels / 65535.0
    expected[0, 0] = 1.0  # transparent counts as white
    np.testing.assert_allclose(read_grayscale(tmp_path / "deep.png"), expected, atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 255, 1.0])
def test_float_tiff_in_either_range(tmp_path: Path, scale: float) -> None:
    pixels = _item()
    Image.fromarray(pixels.astype(np.float32) * np.float32(scale)).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as img:
        assert img.mode == "F"
    np.testing.assert_allclose(read_grayscale(tmp_path / "f.tif"), pixels / 255.0, atol=1e-6)


def test_32_bit_integer_tiff_with_8_bit_values(tmp_path: Path) -> None:
    pixels = _item()
    Image.fromarray(pixels.astype(np.int32)).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as img:
        assert img.mode == "I"
    np.testing.assert_allclose(read_grayscale(tmp_path / "i.tif"), pixels / 255.0)


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_huge_pictures_are_shrunk_before_float_work(tmp_path: Path, mode: str) -> None:
    """A 3000x1800 picture gives the same 28x28 input as a 300x180 one, from
    a float array of at most MAX_SIDE pixels a side (bounded memory)."""
    small = np.array(Image.fromarray(_item(300, 180)))
    big = np.array(Image.fromarray(small).resize((1800, 3000), Image.Resampling.NEAREST))
    if mode == "I;16":
        small, big = small.astype(np.uint16) * 257, big.astype(np.uint16) * 257
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(big).save(tmp_path / "big.png")
    gray = read_grayscale(tmp_path / "big.png")
    assert max(gray.shape) <= MAX_SIDE and gray.shape[0] > gray.shape[1]
    a, b = load_image(tmp_path / "small.png"), load_image(tmp_path / "big.png")
    # The item is found on a coarse copy and cropped to its whole blocks, which
    # differ in size between the two (3 and 8 pixels): close, not equal.
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 6


def test_blank_pictures_are_flagged(tmp_path: Path) -> None:
    for name, value in (("white.png", 255), ("black.png", 0), ("grey.png", 128)):
        Image.fromarray(np.full((50, 60), value, np.uint8)).save(tmp_path / name)
        assert looks_blank(load_image(tmp_path / name))
    Image.fromarray(_item()).save(tmp_path / "item.png")
    assert not looks_blank(load_image(tmp_path / "item.png"))


def _cutout(item: np.ndarray, value_of_item) -> np.ndarray:
    """RGBA: the item's pixels opaque, everything else transparent (RGB 0 there)."""
    rgba = np.zeros(item.shape + (4,), np.uint8)
    mask = item > 0
    rgba[mask, :3] = value_of_item(item)[mask, None]
    rgba[..., 3] = mask * 255
    return rgba


def test_a_light_item_on_transparency_gets_a_black_background(tmp_path: Path) -> None:
    """A white shirt cut out on a transparent background must not vanish into white."""
    item = _item(80, 48)
    Image.fromarray(_cutout(item, lambda a: a)).save(tmp_path / "light.png")
    Image.fromarray(item).save(tmp_path / "plain.png")  # the same item on black
    np.testing.assert_allclose(read_grayscale(tmp_path / "light.png"), item / 255.0)
    assert np.array_equal(load_image(tmp_path / "light.png"), load_image(tmp_path / "plain.png"))
    assert not looks_blank(load_image(tmp_path / "light.png"))


def test_a_dark_item_on_transparency_gets_a_white_background(tmp_path: Path) -> None:
    item = _item(80, 48)
    Image.fromarray(_cutout(item, lambda a: 255 - a)).save(tmp_path / "dark.png")
    photo = np.where(item > 0, 255 - item, 255).astype(np.uint8)  # dark item on white
    Image.fromarray(photo).save(tmp_path / "photo.png")
    np.testing.assert_allclose(read_grayscale(tmp_path / "dark.png"), photo / 255.0)
    assert np.array_equal(load_image(tmp_path / "dark.png"), load_image(tmp_path / "photo.png"))


def test_a_fifo_or_device_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/zero")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a usable path"):
        load_image("a\x00b.png")


def test_one_infinite_pixel_does_not_dim_a_float_image(tmp_path: Path) -> None:
    pixels = _item().astype(np.float32) / np.float32(255)
    pixels[0, 0] = np.inf
    Image.fromarray(pixels).save(tmp_path / "inf.tif")
    gray = read_grayscale(tmp_path / "inf.tif")
    expected = _item() / 255.0
    expected[0, 0] = 1.0  # the infinite pixel itself is clipped to white
    np.testing.assert_allclose(gray, expected, atol=1e-6)


def _item28() -> np.ndarray:
    img = np.zeros((28, 28), np.uint8)
    img[3:25, 7:21] = np.linspace(255, 60, 22).round().astype(np.uint8)[:, None]
    return img


def test_a_28x28_image_on_black_is_taken_as_it_is(tmp_path: Path) -> None:
    Image.fromarray(_item28()).save(tmp_path / "item.png")
    assert np.array_equal(load_image(tmp_path / "item.png"), _item28())


@pytest.mark.parametrize("level", [40, 90, 120])
def test_a_28x28_image_on_gray_gets_a_black_background(tmp_path: Path, level: int) -> None:
    # The same item with its levels lifted onto a gray background: the models never saw
    # one (an outside review measured 13.5% accuracy on test images put on gray 90).
    item = _item28()
    gray = (level + item.astype(np.float64) * (255 - level) / 255).round().astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    assert loaded[0, 0] == 0 and loaded.max() == 255
    assert np.abs(loaded.astype(int) - item.astype(int)).max() <= 1


def test_a_28x28_image_with_a_faint_border_is_not_relevelled(tmp_path: Path) -> None:
    # A border median of 10% or less (Fashion-MNIST's own items touch the border at
    # times) leaves the image as it is.
    item = _item28()
    item[0, :] = 20
    item[:, 0] = 20
    item[-1, :] = 20
    item[:, -1] = 20
    Image.fromarray(item).save(tmp_path / "faint.png")
    assert np.array_equal(load_image(tmp_path / "faint.png"), item)


# ---- photos: noise, uneven light, specks and frames must not move the crop --------
def _photo(kind: str, seed: int = 0) -> np.ndarray:
    """A dark, shaded item (a T-shirt-like shape) on a light 600x800 background, as
    a phone might take it, with one kind of trouble."""
    rng = np.random.default_rng(seed)
    h, w = 800, 600
    y, x = np.mgrid[0:h, 0:w]
    bg = np.full((h, w), 235.0)
    if kind in ("noise", "gradient", "vignette", "specks"):
        bg += rng.normal(0, 6, (h, w))
    if kind == "gradient":
        bg += -35 + 40 * x / w
    if kind == "vignette":
        bg -= 30 * (((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 2)) ** 2)
    body = (y > 300) & (y < 650) & (x > 200) & (x < 420)
    sleeves = (y > 300) & (y < 400) & (x > 140) & (x < 480)
    item = body | sleeves
    img = np.where(item, 40 + 60 * (y - 300) / 350, bg)
    if kind == "specks":
        img[10:14, 10:14] = 20
        img[700:706, 550:556] = 40
    if kind == "frame":
        img[:15] = img[-15:] = 10
        img[:, :15] = img[:, -15:] = 10
    return np.clip(img, 0, 255) / 255


@pytest.mark.parametrize("kind", ["noise", "gradient", "vignette", "specks", "frame"])
def test_a_photos_trouble_does_not_move_the_crop(kind: str) -> None:
    from nnscratch.images import to_fashion_mnist
    clean = to_fashion_mnist(_photo("clean"))
    troubled = to_fashion_mnist(_photo(kind))
    # The item fills the frame as in the clean photo: the same box within a pixel.
    box = [np.nonzero((a > 30).any(axis=k))[0][[0, -1]] for a in (clean, troubled) for k in (0, 1)]
    assert np.abs(np.concatenate(box[:2]) - np.concatenate(box[2:])).max() <= 1, (box, kind)
    assert clean.max() > 200  # the item's darkest part becomes bright
    assert np.abs(clean.astype(int) - troubled.astype(int)).mean() < 8
    # Background black: beside the body, below the sleeves.
    assert troubled[-4:, :3].max() < 30 and troubled[-4:, -3:].max() < 30, troubled


@pytest.mark.parametrize("item, background", [(0.9, 0.15), (0.1, 0.85)])
def test_a_close_up_covering_most_of_the_picture_is_the_item(item, background) -> None:
    # The item covers 60% of the picture, top to bottom: the background is still
    # what the border shows, so the item comes out light and whole.
    from nnscratch.images import to_fashion_mnist
    gray = np.full((300, 200), background)
    gray[:, 40:160] = item
    out = to_fashion_mnist(gray)
    assert out[14, 14] > 200 and out[0, 14] > 200 and out[27, 14] > 200  # light, top to bottom
    lit = np.nonzero((out > 30).any(axis=0))[0]
    # 120 of the 300 rows' width: 11 of 28 columns, centred.
    assert (lit[0], lit[-1]) == (8, 18) and out[:, :8].max() == 0 and out[:, 19:].max() == 0


def test_a_faint_item_is_found_and_stretched_to_full_brightness() -> None:
    from nnscratch.images import looks_blank, to_fashion_mnist
    rng = np.random.default_rng(0)
    gray = 0.5 + rng.normal(0, 0.02, (600, 800))
    gray[200:400, 300:450] += 0.08  # 8% above a noisy gray
    out = to_fashion_mnist(gray, invert="no")
    assert out.max() == 255 and not looks_blank(out)
    lit = np.nonzero((out > 100).any(axis=1))[0]
    assert (lit[0], lit[-1]) == (0, 27)  # cropped to the item, its longer side filling 28


def test_an_item_touching_three_edges_is_kept_beside_a_small_tag() -> None:
    from nnscratch.images import to_fashion_mnist
    gray = np.full((400, 400), 0.9)
    gray[:, :60] = 0.2  # the item touches the top, left and bottom edges
    gray[:60, :150] = 0.2
    gray[300:330, 300:330] = 0.2  # a tag, 3% of the item's mass: kept too
    out = to_fashion_mnist(gray)
    # 400 tall and 330 wide (to the tag's edge): 28 x 23, starting at column 2.
    assert out[:, 3].min() > 200  # the item's column, top to bottom
    assert out[20:24, 22:26].max() > 150  # and the tag, near the bottom right


def test_a_frame_is_set_aside_but_a_plain_border_is_not() -> None:
    from nnscratch.images import _inside_frame
    plain = np.full((100, 80), 0.1)
    plain[30:70, 20:60] = 0.8
    assert _inside_frame(plain) == (0, 100, 0, 80)
    framed = plain.copy()
    framed[:3] = framed[-3:] = 0.9
    framed[:, :3] = framed[:, -3:] = 0.9
    assert _inside_frame(framed) == (3, 97, 3, 77)
    framed[3] = framed[-4] = 0.5  # a ring blending frame and background
    framed[:, 3] = framed[:, -4] = 0.5
    assert _inside_frame(framed) == (4, 96, 4, 76)


def test_pieces_are_labelled_even_when_the_mask_is_full() -> None:
    from nnscratch.images import _label
    assert np.array_equal(_label(np.ones((3, 4), bool)), np.ones((3, 4), int))
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[4, 4] = mask[3, 3] = True  # two pieces (diagonal neighbours join)
    labels = _label(mask)
    assert labels[0, 0] != labels[4, 4] == labels[3, 3] and labels[1, 1] == 0
    assert set(np.unique(labels)) == {0, 1, 2}


def _dark_item_on(background: float, size=(800, 600), item=(200, 600, 100, 500)) -> np.ndarray:
    gray = np.full(size, background)
    top, bottom, left, right = item
    gray[top:bottom, left:right] = 0.1
    gray[top + 40:bottom - 40, left + 40:right - 40] = 0.25  # some inner shading
    return gray


@pytest.mark.parametrize("background", [0.4, 0.45, 0.55, 0.9])
def test_polarity_follows_the_item_not_a_fixed_gray(background) -> None:
    # An underexposed photo (background below mid-gray) of a darker item is still
    # a dark item on a lighter background: inverted, not taken as blank.
    from nnscratch.images import looks_blank, to_fashion_mnist
    out = to_fashion_mnist(_dark_item_on(background))
    assert not looks_blank(out) and out[14, 2] > 200 and out[14, 14] > 100


def test_a_dark_band_along_one_edge_is_not_part_of_the_item() -> None:
    from nnscratch.images import to_fashion_mnist
    plain = to_fashion_mnist(_dark_item_on(0.92))
    edged = _dark_item_on(0.92)
    edged[-60:] = 0.3  # a table edge along the bottom
    assert np.abs(to_fashion_mnist(edged).astype(int) - plain.astype(int)).mean() < 3


@pytest.mark.parametrize("side", [40, 80])
def test_a_small_item_is_cropped_to_a_few_pixels_not_a_block(side) -> None:
    # 800x600 pictures are looked at in blocks of 7 pixels; a 40-pixel item
    # cropped to whole blocks would carry up to 14 pixels of margin.
    from nnscratch.images import to_fashion_mnist
    gray = np.full((800, 600), 0.9)
    gray[301:301 + side, 253:253 + side // 2] = 0.1  # twice as tall as wide
    out = to_fashion_mnist(gray)
    rows = np.nonzero((out > 100).any(axis=1))[0]
    assert rows[0] <= 1 and rows[-1] >= 26  # the item's height fills the 28 rows


def test_a_plain_square_item_with_even_margins_is_not_a_frame() -> None:
    from nnscratch.images import _inside_frame, looks_blank, to_fashion_mnist
    gray = np.full((600, 600), 0.92)
    gray[60:540, 60:540] = 0.2
    gray[200:300, 200:400] = 0.3  # not quite uniform
    assert _inside_frame(gray[::5, ::5]) == (0, 120, 0, 120)
    out = to_fashion_mnist(gray)
    assert not looks_blank(out) and out.min() > 150  # the item fills the 28x28
