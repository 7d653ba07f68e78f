import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset.transforms import (
    BACKGROUND_CLASS,
    CROP_ASPECT_RANGE,
    IMAGE_RESAMPLE,
    STUFF_CLASS,
    THINGS_CLASS,
    JitterFactors,
    TrainAugmentation,
    augment_pair,
    binary_to_tensor,
    content_size_of,
    crop_to_content,
    draft_jpeg,
    fit_size,
    fit_to_canvas,
    grey_to_classes,
    image_to_tensor,
    mask_grey_level,
    min_decode_size,
    mirror_content,
    pad_to_canvas,
    resize_raw,
    sample_crop_box,
    sample_jitter_factors,
    to_upright_rgb,
    upright_size,
    valid_mask,
)

# Official grey levels: background 0, things 85, stuff 255.
GREY = np.array([[0, 85, 255], [255, 0, 85]], dtype=np.uint8)
EXPECTED_BINARY = GREY > 0
EXPECTED_CLASSES = np.array(
    [[BACKGROUND_CLASS, THINGS_CLASS, STUFF_CLASS], [STUFF_CLASS, BACKGROUND_CLASS, THINGS_CLASS]], dtype=np.uint8
)


def _grey(mask: Image.Image) -> np.ndarray:
    """Grey levels as dataset.trans10k reads a mask: binary target ``grey > 0``, classes ``grey_to_classes(grey)``."""
    return np.array(mask_grey_level(mask))


def _mask_in_mode(mode: str) -> Image.Image:
    if mode == "L":
        return Image.fromarray(GREY, mode="L")
    if mode == "RGB":
        return Image.fromarray(np.stack([GREY] * 3, axis=-1), mode="RGB")
    # P: indices 0, 1, 2 whose palette colours are the grey levels 0, 85, 255.
    indices = np.select([GREY == 85, GREY == 255], [1, 2], 0).astype(np.uint8)
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([0, 0, 0, 85, 85, 85, 255, 255, 255])
    return mask


@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
def test_official_levels_decode_to_binary_and_classes_in_every_mode(mode: str) -> None:
    mask = _mask_in_mode(mode)
    assert mask.mode == mode

    np.testing.assert_array_equal(_grey(mask) > 0, EXPECTED_BINARY)
    classes = grey_to_classes(_grey(mask))
    assert classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, EXPECTED_CLASSES)


def test_palette_colour_decides_not_palette_index() -> None:
    # Index 0 is painted white (stuff) and index 1 black (background): the colour is what counts.
    mask = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    mask.putpalette([255, 255, 255, 0, 0, 0])

    np.testing.assert_array_equal(_grey(mask) > 0, [[True, False]])
    np.testing.assert_array_equal(grey_to_classes(_grey(mask)), [[STUFF_CLASS, BACKGROUND_CLASS]])


def test_rgb_pixel_with_any_non_zero_channel_is_transparent() -> None:
    pixels = np.array([[[0, 0, 7], [0, 200, 0], [0, 0, 0]]], dtype=np.uint8)
    mask = Image.fromarray(pixels, mode="RGB")

    np.testing.assert_array_equal(_grey(mask) > 0, [[True, True, False]])
    np.testing.assert_array_equal(grey_to_classes(_grey(mask)), [[THINGS_CLASS, STUFF_CLASS, BACKGROUND_CLASS]])


def test_unofficial_grey_levels_go_to_the_nearer_class() -> None:
    grey = np.array([0, 1, 84, 85, 169, 170, 254, 255], dtype=np.uint8)
    expected = [
        BACKGROUND_CLASS,
        THINGS_CLASS,
        THINGS_CLASS,
        THINGS_CLASS,
        THINGS_CLASS,
        STUFF_CLASS,
        STUFF_CLASS,
        STUFF_CLASS,
    ]
    np.testing.assert_array_equal(grey_to_classes(grey), expected)


def test_unsupported_mask_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported mask mode 'I;16'"):
        mask_grey_level(Image.new("I;16", (4, 4)))


def _write_halves_jpeg(path: Path, size: tuple[int, int], orientation: int) -> Path:
    """Stored left half red, right half blue, with an EXIF Orientation tag."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_6_comes_out_upright(tmp_path: Path) -> None:
    path = _write_halves_jpeg(tmp_path / "rotated.jpg", (40, 30), orientation=6)

    with Image.open(path) as image:
        assert image.size == (40, 30)  # stored pixels
        assert upright_size(image) == (30, 40)  # from the header
        upright = to_upright_rgb(image)

    # Orientation 6 means "rotate 90 degrees clockwise to display": the stored left half becomes the top half.
    assert upright.size == (30, 40)
    pixels = np.array(upright, dtype=int)
    assert pixels[5, 15].tolist() == pytest.approx([255, 0, 0], abs=30)
    assert pixels[35, 15].tolist() == pytest.approx([0, 0, 255], abs=30)


def test_draft_decodes_a_rotated_jpeg_smaller_but_not_below_the_request(tmp_path: Path) -> None:
    path = _write_halves_jpeg(tmp_path / "big.jpg", (400, 300), orientation=6)

    with Image.open(path) as image:
        factor = draft_jpeg(image, (30, 40))  # upright (width, height)
        upright = to_upright_rgb(image)

    assert factor == 8
    assert upright.size == (38, 50)  # ceil(300 / 8) x ceil(400 / 8), still upright
    assert upright.size[0] >= 30 and upright.size[1] >= 40


def test_draft_leaves_png_alone(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    with Image.open(path) as image:
        assert draft_jpeg(image, (10, 10)) == 1
        assert image.size == (400, 300)


@pytest.mark.parametrize("min_area", [0.08, 0.5, 0.9])
def test_crop_boxes_stay_inside_with_area_and_aspect_in_range(min_area: float) -> None:
    width, height = 400, 300
    for seed in range(50):
        left, top, right, bottom = sample_crop_box((width, height), min_area, torch.Generator().manual_seed(seed))
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        area_fraction = (right - left) * (bottom - top) / (width * height)
        assert min_area - 1e-9 <= area_fraction <= 1 + 1e-9
        assert CROP_ASPECT_RANGE[0] - 1e-9 <= (right - left) / (bottom - top) <= CROP_ASPECT_RANGE[1] + 1e-9


def test_crop_scale_one_is_the_whole_image_and_smaller_scales_vary() -> None:
    assert sample_crop_box((400, 300), 1.0, torch.Generator().manual_seed(0)) == (0.0, 0.0, 400.0, 300.0)
    boxes = {sample_crop_box((400, 300), 0.3, torch.Generator().manual_seed(seed)) for seed in range(10)}
    assert len(boxes) == 10


def test_min_decode_size_keeps_the_crop_at_least_the_output_side() -> None:
    # A crop of a quarter of the width and half the height must be decoded from >= 4x / 2x the output side.
    assert min_decode_size((800, 600), (0, 0, 200, 300), (64, 64)) == (256, 128)
    assert min_decode_size((800, 600), (0, 0, 200, 300), (64, 32)) == (256, 64)  # a keep_aspect content box


def test_jitter_factors_stay_in_range() -> None:
    for seed in range(20):
        factors = sample_jitter_factors(0.3, torch.Generator().manual_seed(seed))
        for value in (factors.brightness, factors.contrast, factors.saturation):
            assert 0.7 <= value <= 1.3


def _position_image(width: int, height: int) -> Image.Image:
    """Red encodes x, green encodes y."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([x * 8, y * 8, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def test_augment_pair_flips_both_and_jitters_only_the_image() -> None:
    image = _position_image(16, 16)
    grey = np.zeros((16, 16), dtype=np.uint8)
    grey[:4, :3] = 255  # top-left block: asymmetric
    mask = Image.fromarray(grey, mode="L")
    whole = (0.0, 0.0, 16.0, 16.0)

    plain = augment_pair(image, mask, TrainAugmentation(whole, flip=False, jitter=None), 1, (16, 16))
    flipped = augment_pair(image, mask, TrainAugmentation(whole, flip=True, jitter=None), 1, (16, 16))
    jittered = augment_pair(image, mask, TrainAugmentation(whole, False, JitterFactors(1.5, 0.5, 1.5)), 1, (16, 16))

    np.testing.assert_array_equal(np.array(flipped[0]), np.array(plain[0])[:, ::-1])
    np.testing.assert_array_equal(np.array(flipped[1]), np.array(plain[1])[:, ::-1])
    assert np.array(flipped[1])[0, 15] == 255 and np.array(flipped[1])[0, 0] == 0
    np.testing.assert_array_equal(np.array(jittered[1]), grey)  # mask untouched
    assert not np.array_equal(np.array(jittered[0]), np.array(plain[0]))


def test_tensors_are_in_minus_one_to_one() -> None:
    image = Image.fromarray(np.array([[[0, 255, 0]]], dtype=np.uint8))
    assert image_to_tensor(image).flatten().tolist() == [-1.0, 1.0, -1.0]

    mask = binary_to_tensor(np.array([[True, False]]))
    assert mask.shape == (3, 1, 2) and mask.dtype == torch.float32
    assert mask[:, 0, 0].tolist() == [1.0] * 3 and mask[:, 0, 1].tolist() == [-1.0] * 3


def test_resize_raw_keeps_size_and_range():
    generator = torch.Generator().manual_seed(3)
    raw = torch.rand(1, 40, 60, generator=generator)
    raw[0, ::2, ::2] = 1.0  # sharp checkerboard-ish values overshoot without the clamp
    raw[0, 1::2, 1::2] = 0.0
    for size in [(40, 60), (17, 23), (97, 131), (20, 120)]:
        resized = resize_raw(raw, size)
        assert resized.shape == size
        assert float(resized.min()) >= 0.0 and float(resized.max()) <= 1.0
    assert torch.equal(resize_raw(raw, (40, 60)), raw[0])
    constant = resize_raw(torch.full((10, 10), 0.3), (23, 7))
    assert torch.allclose(constant, torch.full((23, 7), 0.3), atol=1e-6)


def test_resize_raw_antialiases_only_when_shrinking():
    stripes = torch.zeros(16, 48)
    stripes[:, ::2] = 1.0  # one-pixel stripes: shrinking 3x without antialias samples single 0 or 1 columns
    shrunk = resize_raw(stripes, (16, 16))
    assert torch.allclose(shrunk, torch.full((16, 16), 0.5), atol=0.06)
    small = torch.rand(5, 6, generator=torch.Generator().manual_seed(5))
    grown = resize_raw(small, (11, 13))
    expected = torch.nn.functional.interpolate(small[None, None], size=(11, 13), mode="bilinear", align_corners=False)
    assert torch.allclose(grown, expected[0, 0].clamp(0, 1), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Canvas geometry (processing square | keep_aspect)

EXTREME_SIZES = [(1, 1000), (1000, 1), (17, 33), (33, 17), (1, 1), (3, 5000), (999, 1001), (640, 480), (64, 64)]


def _expected_fit(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """keep_aspect's (width, height), computed with exact fractions: longest side = resolution, the other rounded
    half up, at least 1."""
    longest = max(size)
    return tuple(max(1, math.floor(Fraction(side * resolution, longest) + Fraction(1, 2))) for side in size)


@pytest.mark.parametrize("resolution", [16, 64, 1024])
@pytest.mark.parametrize("size", EXTREME_SIZES)
def test_keep_aspect_pad_then_unpad_returns_the_native_size_exactly(size: tuple[int, int], resolution: int) -> None:
    width, height = size
    assert fit_size(size, resolution, "keep_aspect") == _expected_fit(size, resolution)
    assert fit_size(size, resolution, "square") == (resolution, resolution)
    content = content_size_of(size, resolution, "keep_aspect")
    assert content == _expected_fit(size, resolution)[::-1] and max(content) == resolution
    native = np.random.default_rng(width * 7 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    canvas = fit_to_canvas(Image.fromarray(native), resolution, content, IMAGE_RESAMPLE)
    assert canvas.size == (resolution, resolution)
    raw = torch.from_numpy(np.asarray(canvas)[..., 0].astype(np.float32) / 255)  # a "prediction" on the canvas
    (cropped,) = crop_to_content(raw[None], [content])
    assert tuple(cropped.shape) == content
    assert resize_raw(cropped, (height, width)).shape == (height, width)


@pytest.mark.parametrize("content", [(1, 16), (16, 1), (7, 13), (16, 16), (9, 16)])
def test_canvas_content_sits_top_left_padding_replicates_its_edges_and_valid_mask_marks_it(content) -> None:
    height, width = content
    array = np.random.default_rng(height * 31 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    canvas = pad_to_canvas(array, 16)
    assert canvas.shape == (16, 16, 3)
    np.testing.assert_array_equal(canvas[:height, :width], array)  # unpadding is one slice, values untouched
    np.testing.assert_array_equal(canvas[:height, width:], np.repeat(array[:, -1:], 16 - width, axis=1))
    np.testing.assert_array_equal(canvas[height:], np.repeat(canvas[height - 1 : height], 16 - height, axis=0))
    mask = valid_mask(content, 16)
    assert mask.shape == (1, 16, 16) and mask.dtype == torch.float32
    expected = np.zeros((16, 16), dtype=np.float32)
    expected[:height, :width] = 1
    np.testing.assert_array_equal(mask[0].numpy(), expected)
    (cropped,) = crop_to_content(torch.from_numpy(canvas).permute(2, 0, 1)[None], [content])
    np.testing.assert_array_equal(cropped.permute(1, 2, 0).numpy(), array)


def test_mirror_content_is_the_canvas_of_the_mirrored_image() -> None:
    rng = np.random.default_rng(4)
    contents = [(5, 16), (16, 9), (16, 16)]
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in contents]
    batch = torch.stack([torch.from_numpy(pad_to_canvas(a, 16)).permute(2, 0, 1).float() for a in arrays])
    mirrored = mirror_content(batch, contents)
    for i, array in enumerate(arrays):
        expected = pad_to_canvas(np.ascontiguousarray(array[:, ::-1]), 16)  # mirrored first, then padded
        np.testing.assert_array_equal(mirrored[i].permute(1, 2, 0).numpy(), expected)
    torch.testing.assert_close(mirror_content(mirrored, contents), batch, rtol=0, atol=0)  # the padding rebuilt too
    raws = batch[:, 0]  # [B, S, S] predictions mirror the same way
    torch.testing.assert_close(mirror_content(raws, contents), mirrored[:, 0], rtol=0, atol=0)
    assert torch.equal(mirror_content(batch, [(16, 16)] * 3), batch.flip(-1))


def test_geometry_rejects_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="processing"):
        fit_size((10, 10), 16, "letterbox")
    with pytest.raises(ValueError, match="does not fit"):
        pad_to_canvas(np.zeros((17, 4)), 16)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        crop_to_content(torch.zeros(2, 16, 16), [(4, 4)])
    with pytest.raises(ValueError, match="larger than the prediction"):
        crop_to_content(torch.zeros(1, 16, 16), [(17, 4)])
