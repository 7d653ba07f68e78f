"""predict.py on a user's folder of photos: bad and unusual inputs, through the real entry point on the tiny model."""

import sys
from pathlib import Path

import numpy as np
import pytest
from launcher import REPO_ROOT, run_command
from PIL import Image

from dataset.trans10k import DatasetError, load_image

GRADIENT_16 = np.linspace(0, 65535, 40 * 48).round().astype(np.uint16).reshape(40, 48)
GRADIENT_F = np.linspace(0, 1, 40 * 48, dtype=np.float32).reshape(40, 48)


def expected_8bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    """The independent reference: values over their full range to 0..255, replicated to RGB."""
    grey = np.round(values.astype(np.float64) * 255.0 / full_scale).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def own_lines(stderr: str) -> list[str]:
    """stderr without the import-time notices of transformers (torchvision is not installed here)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("[transformers]")]


def predict(config: Path, *args: str, transformer_path: str | None = None):
    command = [sys.executable, str(REPO_ROOT / "predict.py"), "--config", str(config)]
    if transformer_path is not None:
        command += ["--transformer_path", transformer_path]
    return run_command([*command, *args], check=False)


@pytest.fixture
def config(tiny_config, tiny_assets):
    """The tiny base transformer as the 'trained' model (predict.py needs a weights folder, not a trained one)."""
    return tiny_config(
        transformer_path=str(tiny_assets["model"] / "transformer"), eval_batch_size=4, dataloader_num_workers=1
    )


def write_photo(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_animated_gif(path: Path) -> list[np.ndarray]:
    frames = [np.full((24, 32, 3), value, dtype=np.uint8) for value in (30, 200, 120)]
    first, *rest = [Image.fromarray(frame) for frame in frames]
    first.save(path, save_all=True, append_images=rest)
    return frames


@pytest.mark.parametrize(
    "name, values, full_scale", [("g16.png", GRADIENT_16, 65535), ("g16.tif", GRADIENT_16, 65535)]
)
def test_high_bit_depth_grey_is_scaled_not_clipped(tmp_path, name, values, full_scale):
    Image.fromarray(values).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == "I;16"
    assert np.array_equal(np.asarray(load_image(tmp_path / name)), expected_8bit(values, full_scale))


def test_float_and_32bit_images_scaled_or_refused_by_range(tmp_path):
    Image.fromarray(GRADIENT_F).save(tmp_path / "f.tif")
    assert np.array_equal(np.asarray(load_image(tmp_path / "f.tif")), expected_8bit(GRADIENT_F, 1.0))
    Image.fromarray(GRADIENT_16.astype(np.int32)).save(tmp_path / "i16in32.tif")
    assert Image.open(tmp_path / "i16in32.tif").mode == "I"
    assert np.array_equal(np.asarray(load_image(tmp_path / "i16in32.tif")), expected_8bit(GRADIENT_16, 65535))
    Image.fromarray(GRADIENT_F * 4000).save(tmp_path / "f_hdr.tif")
    with pytest.raises(DatasetError, match=r"f_hdr\.tif.*\[0, 4000\], not \[0, 1\]"):
        load_image(tmp_path / "f_hdr.tif")
    Image.fromarray(GRADIENT_16.astype(np.int32) - 100).save(tmp_path / "negative.tif")
    with pytest.raises(DatasetError, match=r"negative\.tif.*beyond 16 bits"):
        load_image(tmp_path / "negative.tif")


def test_a_folder_of_mixed_bad_inputs(config, tmp_path):
    """Every readable image is predicted, with no output clashes; unreadable ones are listed and the exit is 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    write_photo(photos / "a.jpg", 0)
    write_photo(photos / "a.png", 1)
    write_photo(photos / "b.png", 2, size=(50, 40))
    write_photo(photos / "huge.png", 3, size=(120, 100))  # 12000 pixels: above the limit passed below
    Image.fromarray(GRADIENT_16).save(photos / "depth.png")
    Image.fromarray(GRADIENT_F).save(photos / "float.tif")
    Image.fromarray(GRADIENT_F * 4000).save(photos / "hdr.tif")  # float outside [0, 1]: refused at decode
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.jpg").write_text("not an image")
    write_photo(photos / "cut.png", 4)
    (photos / "cut.png").write_bytes((photos / "cut.png").read_bytes()[:300])  # truncated: fails only at decode
    (photos / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble sidecar")
    write_photo(photos / ".hidden.png", 5)
    write_animated_gif(photos / "anim.gif")
    (photos / "readme.txt").write_text("a note")
    out = tmp_path / "out"

    result = predict(config, "--input", str(photos), "--output", str(out), "--max_image_pixels", "10000")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    names = {"a_jpg", "a_png", "b", "depth", "float"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}_{k}.png" for n in names for k in ("mask", "raw", "overlay")
    )
    assert f"wrote {len(names)} prediction(s)" in result.stdout
    listed = result.stderr.split("could not be read", 1)[1]
    for bad in ("cut.png", "empty.jpg", "hdr.tif", "huge.png", "notes.jpg"):
        assert str(photos / bad) in listed
    assert "--max_image_pixels 12000" in listed  # how to allow the big one
    assert "[0, 4000], not [0, 1]" in listed
    assert "dataset.check" not in result.stderr and "remove the pair" not in result.stderr
    assert f"skipped {photos / 'anim.gif'}: an animated image" in result.stdout
    assert "1 file(s)" in result.stdout and "without an image suffix" in result.stdout  # readme.txt
    # Same sizes as their inputs; the two 'a' files got their own predictions.
    assert Image.open(out / "b_mask.png").size == (50, 40)
    assert not np.array_equal(
        np.asarray(Image.open(out / "a_jpg_overlay.png")), np.asarray(Image.open(out / "a_png_overlay.png"))
    )
    # The 16-bit and float gradients reached the model scaled: where no mask is drawn, the overlay is the input.
    for name, values, full_scale in (("depth", GRADIENT_16, 65535), ("float", GRADIENT_F, 1.0)):
        overlay = np.asarray(Image.open(out / f"{name}_overlay.png"))
        background = np.asarray(Image.open(out / f"{name}_mask.png")) == 0
        assert background.any()
        assert np.array_equal(overlay[background], expected_8bit(values, full_scale)[background])


def test_an_animated_gif_alone_is_predicted_from_its_first_frame(config, tmp_path):
    frames = write_animated_gif(tmp_path / "anim.gif")
    out = tmp_path / "out"
    result = predict(config, "--input", str(tmp_path / "anim.gif"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "predicting its first frame" in result.stdout
    overlay = np.asarray(Image.open(out / "anim_overlay.png"))
    background = np.asarray(Image.open(out / "anim_mask.png")) == 0
    assert np.array_equal(overlay[background], frames[0][background])


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_the_input_folder_is_refused_before_the_model_loads(config, tmp_path, where):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_photo(photos / "a.jpg", 0)
    out = photos if where == "same" else photos / "masks"
    # A missing model proves the inputs are checked first: the error is about --output, not the weights.
    result = predict(config, "--input", str(photos), "--output", str(out), transformer_path=str(tmp_path / "none"))
    assert result.returncode == 2
    assert own_lines(result.stderr) == [
        f"predict.py: error: --output {out} is --input {photos} or inside it: a later run would read these outputs "
        "as inputs; choose an output folder outside the input folder"
    ]
    assert not (photos / "masks").exists()


def test_only_unreadable_inputs_exit_1_without_loading_the_model(config, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "empty.png").write_bytes(b"")
    (photos / "._x.jpg").write_bytes(b"sidecar")
    result = predict(config, "--input", str(photos), "--output", str(tmp_path / "out"), transformer_path="/none")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{photos / 'empty.png'}: not a readable image" in result.stderr
    assert "._x.jpg" not in result.stderr + result.stdout
    assert "wrote 0 prediction(s)" in result.stdout


def test_a_missing_model_is_one_line(config, tmp_path):
    write_photo(tmp_path / "a.png", 0)
    result = predict(
        config, "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out"), transformer_path="/none"
    )
    assert result.returncode == 2
    assert len(own_lines(result.stderr)) == 1
    assert own_lines(result.stderr)[0].startswith("predict.py: error: transformer_path /none: no config.json")
    assert "Traceback" not in result.stderr
