"""RandomShiftFlip against a plain per-image loop, and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from nnscratch.augment import RandomShiftFlip


def _loop_reference(images: np.ndarray, dy, dx, flipped, s: int) -> np.ndarray:
    """Output pixel (r, c) reads input (r + dy - s, c + dx - s), 0 outside the
    frame; then flipped images are mirrored left to right."""
    out = np.zeros_like(images)
    n, side, _ = images.shape
    for k in range(n):
        for r in range(side):
            for c in range(side):
                rr, cc = r + dy[k] - s, c + dx[k] - s
                if 0 <= rr < side and 0 <= cc < side:
                    out[k, r, c] = images[k, rr, cc]
        if flipped[k]:
            out[k] = out[k, :, ::-1].copy()
    return out


@pytest.mark.parametrize("shape", [(9, 6, 6), (9, 36)])
@pytest.mark.parametrize("max_shift, flip", [(0, 0.0), (0, 1.0), (1, 0.5), (2, 0.5)])
def test_matches_a_per_image_loop(shape, max_shift, flip):
    batch = np.random.default_rng(0).random(shape).astype(np.float32)
    out = RandomShiftFlip(max_shift, flip)(batch, np.random.default_rng(5))
    # The same draws, in the same order, as the augmentation makes them.
    rng = np.random.default_rng(5)
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, shape[0]))
    flipped = rng.random(shape[0]) < flip
    images = batch.reshape(shape[0], 6, 6)
    expected = _loop_reference(images, dy, dx, flipped, max_shift)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert np.array_equal(out.reshape(expected.shape), expected)
    assert batch.reshape(-1).tolist() == np.random.default_rng(0).random(shape).astype(
        np.float32).reshape(-1).tolist()  # the input is left alone


def test_zero_shift_and_no_flip_is_the_identity_and_full_flip_mirrors():
    batch = np.random.default_rng(1).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    assert np.array_equal(RandomShiftFlip(0, 0.0)(batch, np.random.default_rng(0)), batch)
    assert np.array_equal(RandomShiftFlip(0, 1.0)(batch, np.random.default_rng(0)), batch[:, :, ::-1])


def test_shifts_cover_every_offset_and_keep_pixel_mass_inside_the_frame():
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 10:18, 10:18] = 1.0  # an item well inside the frame: no shift can cut it
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = RandomShiftFlip(2, 0.0)(image, rng)[0]
        assert out.sum() == 64.0
        rows, cols = np.nonzero(out)
        seen.add((rows.min() - 10, cols.min() - 10))
    assert seen == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}


@pytest.mark.parametrize("kwargs, message", [
    ({"max_shift": -1}, "non-negative"), ({"max_shift": 1.5}, "non-negative"),
    ({"flip": 1.5}, "probability"), ({"flip": -0.1}, "probability"),
    ({"max_shift": True}, "non-negative"), ({"flip": "0.5"}, "probability"),
    ({"flip": None}, "probability"), ({"flip": float("nan")}, "probability"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomShiftFlip(**kwargs)


def test_a_shift_that_could_empty_the_frame_or_non_square_images_are_refused():
    with pytest.raises(ValueError, match="at most 13"):
        RandomShiftFlip(14)(np.zeros((2, 28, 28), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="square"):
        RandomShiftFlip(1)(np.zeros((2, 30), np.float32), np.random.default_rng(0))


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.bool_, object, ">f4", ">u2",
                                   np.longdouble])
def test_any_dtype_is_shifted_like_float64(dtype):
    batch = np.random.default_rng(2).integers(0, 2, (5, 6, 6))
    expected = RandomShiftFlip(1, 0.5)(batch.astype(np.float64), np.random.default_rng(3))
    out = RandomShiftFlip(1, 0.5)(batch.astype(dtype), np.random.default_rng(3))
    assert out.dtype == dtype and np.array_equal(out.astype(np.float64), expected)


def test_numpy_integer_arguments_are_accepted():
    aug = RandomShiftFlip(np.int64(1), np.float32(0.5))
    assert aug.config() == {"max_shift": 1, "flip": 0.5}


@pytest.mark.parametrize("shape", [(3, 4, 16), (3, 2, 8), (28, 28), (784,), (3, 2, 28, 28),
                                   (3, 28, 14), (3, 0), (3, 0, 0)])
def test_batches_that_are_not_square_images_are_refused(shape):
    # (3, 4, 16) and (3, 2, 8) hold a square number of pixels but are not square:
    # read as 8x8 and 4x4 their columns would be scrambled.
    with pytest.raises(ValueError, match=r"square images shaped \(N, S, S\)"):
        RandomShiftFlip(1)(np.zeros(shape, np.float32), np.random.default_rng(0))


@pytest.mark.parametrize("shape", [(0, 28, 28), (0, 784), (5, 1, 6, 6)])
def test_empty_and_channel_batches_keep_their_shape(shape):
    batch = np.random.default_rng(4).random(shape).astype(np.float32)
    out = RandomShiftFlip(1, 0.5)(batch, np.random.default_rng(1))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    if batch.size:
        flat = RandomShiftFlip(1, 0.5)(batch.reshape(shape[0], -1), np.random.default_rng(1))
        assert np.array_equal(out.reshape(flat.shape), flat)


def test_a_single_image_gets_a_hint_and_a_missing_generator_a_type_error():
    with pytest.raises(ValueError, match=r"single image, pass x\[None\]"):
        RandomShiftFlip(1)(np.zeros((28, 28), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"single image, pass x\[None\]"):
        RandomShiftFlip(1)(np.zeros(784, np.float32), np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        RandomShiftFlip(1)(np.zeros((2, 28, 28), np.float32), None)
