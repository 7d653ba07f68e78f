import threading

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation.image_writer as image_writer
from evaluation.image_writer import (
    BackgroundImageWriter,
    ImageWriteError,
    png_to_raw,
    raw_to_png_array,
    render_panel,
)
from evaluation.metrics import score_image


def test_writer_round_trips_arrays_and_pil_images(tmp_path):
    generator = np.random.default_rng(0)
    grey = generator.integers(0, 256, (13, 17), dtype=np.uint8)
    rgb = generator.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    pil = Image.fromarray(generator.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    with BackgroundImageWriter(max_workers=2, max_pending=2) as writer:
        writer.submit(tmp_path / "a" / "b" / "grey.png", grey)
        writer.submit(tmp_path / "rgb.png", rgb)
        writer.submit(tmp_path / "pil.png", pil)
        grey[:] = 0  # the writer copied the pixels at submit
    assert writer.num_written == 3
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a" / "b" / "grey.png")), grey)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pil.png")), np.asarray(pil))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "grey.png", "pil.png", "rgb.png"]


def test_fast_png_writes_the_same_pixels_and_modes_as_pillows_default(tmp_path):
    """encode_png and the fast Pillow settings change only the bytes: decoding gives what Pillow's level 6 gave."""
    generator = np.random.default_rng(3)
    smooth = np.cumsum(generator.integers(-2, 3, (96, 128)), axis=1).clip(0, 255).astype(np.uint8)
    images = {
        "mask": (generator.random((96, 128)) > 0.7).astype(np.uint8) * 255,
        "raw": smooth,
        "overlay": generator.integers(0, 256, (96, 128, 3), dtype=np.uint8),
        "rgba": generator.integers(0, 256, (9, 7, 4), dtype=np.uint8),
        "one_column": generator.integers(0, 256, (5, 1, 3), dtype=np.uint8),
        "one_row": generator.integers(0, 256, (1, 6), dtype=np.uint8),
        "extremes": np.array([[0, 255, 0, 255], [255, 0, 255, 0]], dtype=np.uint8),  # Sub differences wrap mod 256
        "pil_rgb": Image.fromarray(generator.integers(0, 256, (8, 9, 3), dtype=np.uint8)),
        "pil_palette": Image.fromarray(generator.integers(0, 256, (8, 9, 3), dtype=np.uint8)).convert("P"),
        "pil_bilevel": Image.fromarray(generator.random((8, 9)) > 0.5),
    }
    with BackgroundImageWriter() as writer:
        for name, image in images.items():
            writer.submit(tmp_path / f"{name}.png", image)
    for name, image in images.items():
        before_image = image if isinstance(image, Image.Image) else Image.fromarray(image)
        before_image.save(tmp_path / f"{name}-level6.png", format="PNG", compress_level=6)
        with Image.open(tmp_path / f"{name}.png") as fast, Image.open(tmp_path / f"{name}-level6.png") as before:
            assert fast.mode == before.mode, name
            assert np.array_equal(np.asarray(fast), np.asarray(before)), name
            if fast.mode == "P":
                assert fast.getpalette() == before.getpalette()
            assert np.array_equal(np.asarray(fast), np.asarray(image)), name


def test_writer_error_is_raised_on_close(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory is needed")
    writer = BackgroundImageWriter()
    writer.submit(blocker / "x.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ImageWriteError, match="not_a_dir") as caught:
        writer.close()
    assert isinstance(caught.value.__cause__, OSError)
    writer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(tmp_path / "y.png", np.zeros((2, 2), dtype=np.uint8))


def test_writer_error_is_raised_on_context_exit_and_next_submit(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ImageWriteError):
        with BackgroundImageWriter(max_workers=1) as writer:
            writer.submit(blocker / "x.png", np.zeros((2, 2), dtype=np.uint8))
            writer._executor.submit(lambda: None).result()  # single worker: the failed write has finished
            writer.submit(tmp_path / "ok.png", np.zeros((2, 2), dtype=np.uint8))


def test_writer_blocks_when_queue_is_full(tmp_path, monkeypatch):
    release = threading.Event()
    real_save = image_writer._save_png

    def slow_save(path, image):
        release.wait(timeout=10)
        real_save(path, image)

    monkeypatch.setattr(image_writer, "_save_png", slow_save)
    image = np.zeros((2, 2), dtype=np.uint8)
    with BackgroundImageWriter(max_workers=1, max_pending=2) as writer:
        writer.submit(tmp_path / "0.png", image)
        writer.submit(tmp_path / "1.png", image)
        third = threading.Thread(target=writer.submit, args=(tmp_path / "2.png", image))
        third.start()
        third.join(timeout=0.3)
        assert third.is_alive()  # blocked: two writes pending
        release.set()
        third.join(timeout=10)
        assert not third.is_alive()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png", "2.png"]


def test_png_round_trip_within_half_a_level(tmp_path):
    raw = torch.rand(31, 29, generator=torch.Generator().manual_seed(1))
    raw[0, :3] = torch.tensor([0.0, 1.0, 0.5])
    array = raw_to_png_array(raw)
    assert array.dtype == np.uint8 and array.shape == (31, 29)
    assert np.array_equal(array, np.round(raw.numpy().astype(np.float64) * 255).astype(np.uint8))
    Image.fromarray(array).save(tmp_path / "raw.png")
    back = png_to_raw(tmp_path / "raw.png")
    assert back.dtype == torch.float32 and back.shape == raw.shape
    assert float((back - raw).abs().max()) <= 1 / 510 + 1e-7
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        raw_to_png_array(torch.full((2, 2), -0.1))


def test_png_threshold_boundary_127_128(tmp_path):
    Image.fromarray(np.array([[127, 128]], dtype=np.uint8)).save(tmp_path / "edge.png")
    raw = png_to_raw(tmp_path / "edge.png")
    score = score_image(raw, torch.tensor([[False, True]]), 0.5)
    assert (score.tp, score.tn, score.fp, score.fn) == (1, 1, 0, 0)


@pytest.mark.parametrize("mode", ["RGB", "I;16", "P"])
def test_png_to_raw_refuses_non_grayscale_8bit(tmp_path, mode):
    path = tmp_path / f"bad_{mode.replace(';', '')}.png"
    Image.new(mode, (3, 2)).save(path)
    with pytest.raises(ValueError, match=path.name):
        png_to_raw(path)


def test_render_panel_colours():
    image = np.full((2, 3, 3), 77, dtype=np.uint8)
    raw = torch.tensor([[0.9, 0.9, 0.1], [0.1, 0.5, 0.2]])
    gt = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.uint8)
    panel = np.asarray(render_panel(image, raw, gt, threshold=0.5, gap=1))
    assert panel.shape == (2, 4 * 3 + 3, 3)
    tiles = [panel[:, i * 4 : i * 4 + 3] for i in range(4)]
    assert (tiles[0] == 77).all()
    assert np.array_equal(tiles[1][..., 0], np.round(raw.numpy() * 255).astype(np.uint8))
    expected_error = np.array(
        [
            [(255, 255, 255), (255, 0, 0), (0, 0, 255)],  # TP, FP, FN
            [(0, 0, 0), (255, 255, 255), (0, 0, 0)],  # TN, TP (0.5 >= 0.5), TN
        ],
        dtype=np.uint8,
    )
    assert np.array_equal(tiles[2], expected_error)
    assert np.array_equal(tiles[3][..., 0], gt.numpy() * 255)
    assert (panel[:, 3] == 128).all()  # gap column
    with pytest.raises(ValueError, match="differ in size"):
        render_panel(np.zeros((4, 4, 3), dtype=np.uint8), raw, gt, 0.5)
