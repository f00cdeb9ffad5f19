"""Real images become MNIST-format digits the same way whatever their format or polarity."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from inkwell.errors import ImageTooLargeError, InvalidImageError, NoInkError
from inkwell.preprocessing import ImageLimits, preprocess_bytes, validate_mnist_array


def _drawn_one(size: tuple[int, int] = (120, 200), dark_ink: bool = True) -> Image.Image:
    paper, ink = (255, 0) if dark_ink else (0, 255)
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.line([(w // 2, h // 6), (w // 2, 5 * h // 6)], fill=ink, width=max(3, w // 12))
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_formats_give_centred_20px_digit(fmt: str) -> None:
    out = preprocess_bytes(_encode(_drawn_one(), fmt))
    assert out.shape == (28, 28) and out.dtype == np.float32
    rows = np.flatnonzero((out > 0.3).any(axis=1))
    assert 18 <= rows[-1] - rows[0] + 1 <= 21  # the longer side is scaled to 20 px
    ys, xs = np.nonzero(out)
    centre = np.average(ys, weights=out[ys, xs]), np.average(xs, weights=out[ys, xs])
    assert abs(centre[0] - 13.5) < 1 and abs(centre[1] - 13.5) < 1


def test_polarity_is_detected() -> None:
    dark = preprocess_bytes(_encode(_drawn_one(dark_ink=True), "PNG"))
    light = preprocess_bytes(_encode(_drawn_one(dark_ink=False), "PNG"))
    assert np.abs(dark - light).max() < 0.05


def test_transparent_canvas_drawing_keeps_its_ink() -> None:
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(image).line([(50, 10), (50, 90)], fill=(0, 0, 0, 255), width=8)
    out = preprocess_bytes(_encode(image, "PNG"))
    assert out.max() > 0.9


def test_blank_image_has_no_ink() -> None:
    with pytest.raises(NoInkError):
        preprocess_bytes(_encode(Image.new("L", (50, 50), 255), "PNG"))


def test_non_image_bytes_are_rejected() -> None:
    with pytest.raises(InvalidImageError, match="not a readable image"):
        preprocess_bytes(b"hello, not an image")


def test_truncated_image_is_rejected() -> None:
    data = _encode(_drawn_one(), "PNG")
    with pytest.raises(InvalidImageError):
        preprocess_bytes(data[: len(data) // 2])


def test_oversized_image_is_rejected_before_decoding() -> None:
    data = _encode(Image.new("L", (3000, 3000), 255), "PNG")
    with pytest.raises(ImageTooLargeError, match="3000x3000"):
        preprocess_bytes(data, ImageLimits(max_pixels=1_000_000))


@pytest.mark.parametrize(
    "values",
    [[[0] * 28] * 27, [[float("nan")] * 28] * 28, [[300] * 28] * 28, [["a"] * 28] * 28],
)
def test_malformed_arrays_are_rejected(values: object) -> None:
    with pytest.raises(InvalidImageError):
        validate_mnist_array(values)


def test_uint8_range_arrays_are_scaled() -> None:
    out = validate_mnist_array([[255] * 28] * 28)
    assert out.max() == 1.0


def _reference_to_mnist(ink: np.ndarray) -> np.ndarray:
    """The textbook steps with SciPy's own centre of mass (what `to_mnist` must equal)."""
    from scipy import ndimage

    mask = ink > 0.25
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = 20 / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR
    )
    canvas = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - new_h) // 2, (28 - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(resized, np.float32) / 255
    cy, cx = ndimage.center_of_mass(canvas)
    return np.clip(ndimage.shift(canvas, (13.5 - cy, 13.5 - cx), order=1), 0, 1)


def test_fast_normalisation_matches_the_reference_steps() -> None:
    from inkwell.preprocessing import ink_map, to_mnist

    rng = np.random.default_rng(0)
    for trial in range(40):
        image = Image.new("L", (int(rng.integers(30, 160)), int(rng.integers(30, 160))), 255)
        draw = ImageDraw.Draw(image)
        w, h = image.size
        for _ in range(int(rng.integers(1, 4))):  # off-centre, lopsided strokes
            points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
            draw.line(points, fill=int(rng.integers(0, 80)), width=int(rng.integers(2, 9)))
        gray = np.asarray(image, np.float32) / 255
        if trial % 2:
            gray = 1 - gray  # light ink on dark paper
        ink = ink_map(gray)
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        light_paper = np.median(border) >= 0.5
        expected_bg = 1 - np.median(border) if light_paper else np.median(border)
        expected = np.clip(((1 - gray if light_paper else gray) - expected_bg), 0, None)
        np.testing.assert_allclose(ink, expected / expected.max(), atol=1e-5)
        # Upscaled crops are resized in float, the reference rounds them to 8 bits first.
        np.testing.assert_allclose(to_mnist(ink), _reference_to_mnist(ink), atol=0.02)


def _photo_of_a_digit(size: int) -> np.ndarray:
    """A thick '7' scanned as a photo: dark ink on grey paper, off-centre, with margins."""
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 14:18] = 255
    digit[6:9, 8:18] = 220
    from tests.service.conftest import as_photo

    return as_photo(digit, size=size)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("size", [20, 28, 140, 600])
def test_native_normalisation_is_pinned_to_the_pillow_scipy_steps(fmt: str, size: int) -> None:
    from inkwell.preprocessing import decode_image, ink_map, to_mnist

    image = Image.fromarray(_photo_of_a_digit(size))
    data = _encode(image, fmt)
    ink = ink_map(decode_image(data))
    expected = _reference_to_mnist(ink)
    served = preprocess_bytes(data)
    # Upscaled digits differ only by Pillow's 8-bit rounding of the resized crop.
    np.testing.assert_allclose(served, expected, atol=0.02)
    np.testing.assert_allclose(to_mnist(ink), served)
    assert float(np.abs(served - expected).mean()) < 0.002


def test_normalisation_costs_a_fraction_of_the_pillow_scipy_steps() -> None:
    import time

    from inkwell.preprocessing import decode_image, ink_map, to_mnist

    ink = ink_map(decode_image(_encode(Image.fromarray(_photo_of_a_digit(28)), "PNG")))

    def cpu_seconds(normalise: object, rounds: int = 300) -> float:
        assert callable(normalise)
        start = time.process_time()
        for _ in range(rounds):
            normalise(ink)
        return time.process_time() - start

    # Interleaved best-of-five, so a busy neighbour slows both sides alike.
    ours = min(cpu_seconds(to_mnist) for _ in range(5))
    reference = min(cpu_seconds(_reference_to_mnist) for _ in range(5))
    assert ours < 0.5 * reference, f"to_mnist {ours:.4f}s vs reference {reference:.4f}s"
