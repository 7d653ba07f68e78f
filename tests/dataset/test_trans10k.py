from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import trans10k, transforms
from dataset.trans10k import (
    DatasetError,
    ImageFiles,
    Sample,
    TrainSampler,
    Trans10kEval,
    Trans10kTrain,
    augmentation_seed,
    eval_collate,
    find_problems,
    find_samples,
    load_image,
    model_pixels,
    read_image_size,
    validate_split,
)
from dataset.transforms import BACKGROUND_CLASS, STUFF_CLASS, THINGS_CLASS

# ---------------------------------------------------------------------------------------------------------------------
# Layout discovery


def test_find_samples_train(tree: Path) -> None:
    samples = find_samples(tree, "train")
    assert [(s.stem, s.split, s.subset) for s in samples] == [("tr0", "train", ""), ("tr1", "train", "")]
    assert samples[0].image_path == tree / "train" / "images" / "tr0.jpg"
    assert samples[0].mask_path == tree / "train" / "masks" / "tr0_mask.png"


@pytest.mark.parametrize("split", ["validation", "test"])
def test_find_samples_subsets_in_order(tree: Path, split: str) -> None:
    prefix = split[:2]
    samples = find_samples(tree, split)
    assert [(s.stem, s.subset) for s in samples] == [
        (f"{prefix}easy0", "easy"),
        (f"{prefix}easy1", "easy"),
        (f"{prefix}hard0", "hard"),
        (f"{prefix}hard1", "hard"),
    ]
    assert all(s.image_path.parent == tree / split / s.subset / "images" for s in samples)
    assert [s.subset for s in find_samples(tree, split, subsets=("hard",))] == ["hard", "hard"]


def test_find_samples_accepts_png_and_jpeg_images_and_ignores_other_files(tree: Path, write_image, write_mask) -> None:
    folder = tree / "train"
    write_image(folder / "images" / "a.png")
    write_image(folder / "images" / "b.jpeg")
    write_mask(folder / "masks" / "a_mask.png")
    write_mask(folder / "masks" / "b_mask.png")
    (folder / "images" / "notes.txt").write_text("not an image")
    (folder / "images" / ".DS_Store").write_bytes(b"\0")

    samples = find_samples(tree, "train")
    assert [s.image_path.name for s in samples] == ["a.png", "b.jpeg", "tr0.jpg", "tr1.jpg"]


def test_image_without_mask_names_the_image_and_the_expected_mask(tree: Path) -> None:
    (tree / "train" / "masks" / "tr1_mask.png").unlink()
    with pytest.raises(DatasetError) as error:
        find_samples(tree, "train")
    message = str(error.value)
    assert "image without mask" in message
    assert str(tree / "train" / "images" / "tr1.jpg") in message
    assert str(tree / "train" / "masks" / "tr1_mask.png") in message


def test_mask_without_image_names_the_mask(tree: Path) -> None:
    (tree / "test" / "hard" / "images" / "tehard0.jpg").unlink()
    with pytest.raises(DatasetError, match="mask without image") as error:
        find_samples(tree, "test")
    assert str(tree / "test" / "hard" / "masks" / "tehard0_mask.png") in str(error.value)


def test_missing_split_shows_the_expected_layout(tree: Path) -> None:
    for path in sorted((tree / "validation").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tree / "validation").rmdir()

    with pytest.raises(DatasetError) as error:
        find_samples(tree, "validation")
    message = str(error.value)
    assert f"missing split folder {tree / 'validation'}" in message
    assert "Expected Trans10k layout" in message and "validation/easy/images/" in message


def test_empty_split_folder_is_an_error(tree: Path) -> None:
    for path in (tree / "train" / "images").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="empty folder") as error:
        find_samples(tree, "train")
    assert str(tree / "train" / "images") in str(error.value)


def test_missing_subset_folder_is_named(tree: Path) -> None:
    images_dir = tree / "validation" / "hard" / "images"
    for path in images_dir.iterdir():
        path.unlink()
    images_dir.rmdir()
    with pytest.raises(DatasetError, match=f"missing folder {images_dir}"):
        find_samples(tree, "validation")
    assert len(find_samples(tree, "validation", subsets=("easy",))) == 2


def test_unknown_split_is_a_value_error(tree: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        find_samples(tree, "val")


# ---------------------------------------------------------------------------------------------------------------------
# File problems


def test_clean_tree_has_no_problems(tree: Path) -> None:
    for split in ("train", "validation", "test"):
        assert find_problems(find_samples(tree, split), deep=True) == []
        assert len(validate_split(tree, split, deep=True)) == (2 if split == "train" else 4)


def test_corrupt_file_is_named(tree: Path) -> None:
    corrupt = tree / "train" / "images" / "tr0.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    problems = find_problems(find_samples(tree, "train"))
    assert len(problems) == 1
    assert f"cannot read image {corrupt}" in problems[0]


def test_sixteen_bit_mask_is_reported_as_unsupported(tree: Path) -> None:
    mask_path = tree / "train" / "masks" / "tr1_mask.png"
    Image.new("I;16", (40, 30)).save(mask_path)
    (problem,) = find_problems(find_samples(tree, "train"))
    assert f"cannot read mask {mask_path}" in problem and "unsupported mask mode" in problem


def test_two_images_with_one_stem_are_a_problem(tree: Path, write_image) -> None:
    duplicate = write_image(tree / "train" / "images" / "tr0.png")
    with pytest.raises(DatasetError, match="two images for stem 'tr0'") as error:
        find_samples(tree, "train")
    assert str(duplicate) in str(error.value)


def test_size_mismatch_of_swapped_sides_hints_at_a_rotated_pair(tree: Path, write_mask) -> None:
    write_mask(tree / "train" / "masks" / "tr0_mask.png", size=(30, 40))
    write_mask(tree / "train" / "masks" / "tr1_mask.png", size=(20, 30))
    rotated, other = find_problems(find_samples(tree, "train"))
    assert "size mismatch" in rotated and "40x30" in rotated and "30x40" in rotated
    assert "rotated pair?" in rotated and str(tree / "train" / "masks" / "tr0_mask.png") in rotated
    assert "size mismatch" in other and "rotated pair?" not in other


def test_sizes_are_compared_after_exif_orientation(tree: Path, write_image, write_mask) -> None:
    # Stored 30x40 with orientation 6 is upright 40x30, the size of the mask.
    write_image(tree / "train" / "images" / "tr0.jpg", size=(30, 40), exif_orientation=6)
    assert find_problems(find_samples(tree, "train"), deep=True) == []

    write_mask(tree / "train" / "masks" / "tr0_mask.png", size=(30, 40))  # a mask of the stored pixels
    (problem,) = find_problems(find_samples(tree, "train"))
    assert "rotated pair?" in problem


def test_truncated_file_is_found_only_by_the_deep_check(tree: Path) -> None:
    image_path = tree / "validation" / "easy" / "images" / "vaeasy0.jpg"
    data = image_path.read_bytes()
    image_path.write_bytes(data[: len(data) * 2 // 3])
    samples = find_samples(tree, "validation")

    assert find_problems(samples) == []
    (problem,) = find_problems(samples, deep=True)
    assert str(image_path) in problem


def test_validate_split_lists_all_problems(tree: Path, write_mask) -> None:
    (tree / "test" / "easy" / "images" / "teeasy0.jpg").write_bytes(b"garbage")
    write_mask(tree / "test" / "hard" / "masks" / "tehard1_mask.png", size=(30, 40))
    (tree / "test" / "hard" / "masks" / "tehard0_mask.png").unlink()

    with pytest.raises(DatasetError) as error:
        validate_split(tree, "test")
    message = str(error.value)
    assert "3 problem(s)" in message
    assert "teeasy0.jpg" in message and "tehard1_mask.png" in message and "tehard0_mask.png" in message


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # stored left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    image = load_image(path)
    assert image.mode == "RGB" and image.size == (30, 40)
    assert read_image_size(path) == (30, 40)
    assert np.array(image, dtype=int)[5, 15, 0] > 200  # red is on top once upright
    assert np.array(image, dtype=int)[35, 15, 0] < 50


def _train(samples: list[Sample], **overrides) -> Trans10kTrain:
    options = dict(resolution=16, random_flip=True, color_jitter=0.0, random_crop_scale=1.0, seed=0)
    return Trans10kTrain(samples, **(options | overrides))


def test_train_item_shapes_and_ranges(tree: Path) -> None:
    dataset = _train(find_samples(tree, "train"), color_jitter=0.3, random_crop_scale=0.5)
    item = dataset[(1, 123)]
    assert item["stem"] == "tr1"
    for key in ("pixel_values", "mask_values"):
        assert item[key].shape == (3, 16, 16) and item[key].dtype == torch.float32
        assert item[key].min() >= -1 and item[key].max() <= 1
    mask = item["mask_values"]
    assert set(mask.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])


def _write_position_pair(root: Path, size: int) -> Sample:
    """PNG image whose red/green channels encode x/y (exact, no JPEG loss) and an asymmetric mask."""
    x, y = np.meshgrid(np.arange(size), np.arange(size))
    pixels = np.stack([x * 8, y * 8, np.zeros_like(x)], axis=-1).astype(np.uint8)
    image_path, mask_path = root / "pos.png", root / "pos_mask.png"
    Image.fromarray(pixels).save(image_path)
    Image.fromarray(((x < 8) & (y < 16)).astype(np.uint8) * 255).save(mask_path)
    return Sample(image_path, mask_path, "pos", "train", "")


def test_flip_is_identical_on_image_and_mask(tmp_path: Path) -> None:
    dataset = _train([_write_position_pair(tmp_path, 32)], resolution=32)
    source_x_of_first_column = set()
    for aug_seed in range(16):
        item = dataset[(0, aug_seed)]
        pixels = torch.round((item["pixel_values"] + 1) * 127.5).to(torch.int64)
        source_x, source_y = pixels[0] // 8, pixels[1] // 8
        expected_mask = (source_x < 8) & (source_y < 16)
        assert torch.equal(item["mask_values"][0] > 0, expected_mask), f"aug_seed {aug_seed}"
        source_x_of_first_column.add(int(source_x[0, 0]))
    assert source_x_of_first_column == {0, 31}  # some seeds flip, some do not


def test_random_crop_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    size = 32
    dataset = _train([_write_position_pair(tmp_path, size)], resolution=16, random_crop_scale=0.3)
    first_columns = set()
    for aug_seed in range(12):
        item = dataset[(0, aug_seed)]
        source_x = (item["pixel_values"][0] + 1) * 127.5 / 8  # bicubic: interpolated, so compare away from edges
        source_y = (item["pixel_values"][1] + 1) * 127.5 / 8
        mask = item["mask_values"][0] > 0
        clearly_inside = (source_x < 7) & (source_y < 15)
        clearly_outside = (source_x > 9) | (source_y > 17)
        assert mask[clearly_inside].all() and not mask[clearly_outside].any(), f"aug_seed {aug_seed}"
        first_columns.add(round(float(source_x[0, 0]), 1))
    assert len(first_columns) > 6  # the crop really moves


def test_same_key_gives_identical_tensors(tree: Path) -> None:
    dataset = _train(find_samples(tree, "train"), color_jitter=0.4, random_crop_scale=0.3)
    first, second = dataset[(0, 99)], dataset[(0, 99)]
    assert torch.equal(first["pixel_values"], second["pixel_values"])
    assert torch.equal(first["mask_values"], second["mask_values"])


def test_plain_index_uses_the_epoch_zero_augmentation(tree: Path) -> None:
    dataset = _train(find_samples(tree, "train"), color_jitter=0.4, random_crop_scale=0.3, seed=7)
    by_index = dataset[1]
    by_key = dataset[(1, augmentation_seed(7, 0, 1))]
    assert torch.equal(by_index["pixel_values"], by_key["pixel_values"])


def test_different_epochs_augment_differently(tree: Path) -> None:
    dataset = _train(find_samples(tree, "train"), color_jitter=0.4, random_crop_scale=0.3)
    sampler = TrainSampler(len(dataset), seed=0)
    keys_by_epoch = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        keys_by_epoch.append(dict(sampler))
    seed_epoch_0, seed_epoch_1 = keys_by_epoch[0][0], keys_by_epoch[1][0]
    assert seed_epoch_0 != seed_epoch_1
    pixels_0 = dataset[(0, seed_epoch_0)]["pixel_values"]
    pixels_1 = dataset[(0, seed_epoch_1)]["pixel_values"]
    assert not torch.equal(pixels_0, pixels_1)


def test_sampler_is_a_reproducible_permutation_per_epoch() -> None:
    sampler, twin = TrainSampler(50, seed=3), TrainSampler(50, seed=3)
    epoch_0 = list(sampler)
    assert len(sampler) == 50 and sorted(index for index, _ in epoch_0) == list(range(50))
    assert epoch_0 == list(twin) == list(sampler)
    assert [index for index, _ in epoch_0] != list(range(50))

    sampler.set_epoch(1)
    epoch_1 = list(sampler)
    assert [index for index, _ in epoch_1] != [index for index, _ in epoch_0]
    assert all(seed == augmentation_seed(3, 1, index) for index, seed in epoch_1)
    assert list(TrainSampler(50, seed=4)) != epoch_0


def _batches(dataset: Trans10kTrain, num_workers: int) -> list[dict]:
    sampler = TrainSampler(len(dataset), seed=5)
    sampler.set_epoch(2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=num_workers)
    return list(loader)


def test_zero_and_two_workers_give_identical_batches(make_tree) -> None:
    samples = find_samples(make_tree(per_folder=6), "train")
    dataset = _train(samples, color_jitter=0.4, random_crop_scale=0.3)
    in_process, with_workers = _batches(dataset, 0), _batches(dataset, 2)
    assert len(in_process) == len(with_workers) == 2
    for batch, twin in zip(in_process, with_workers, strict=True):
        assert batch["stem"] == twin["stem"]
        assert torch.equal(batch["pixel_values"], twin["pixel_values"])
        assert torch.equal(batch["mask_values"], twin["mask_values"])


def test_corrupt_file_while_loading_raises_naming_it(tree: Path) -> None:
    samples = find_samples(tree, "validation")
    samples[1].mask_path.write_bytes(b"broken")
    for dataset in (_train(samples), Trans10kEval(samples, resolution=16)):
        with pytest.raises(DatasetError, match="cannot read mask") as error:
            dataset[1]
        assert str(samples[1].mask_path) in str(error.value)


def test_size_mismatch_while_loading_raises_naming_both_files(tree: Path, write_mask) -> None:
    samples = find_samples(tree, "train")
    write_mask(samples[0].mask_path, size=(30, 40))
    for dataset in (_train(samples), Trans10kEval(samples, resolution=16)):
        with pytest.raises(DatasetError, match="rotated pair") as error:
            dataset[0]
        assert str(samples[0].image_path) in str(error.value) and str(samples[0].mask_path) in str(error.value)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


def test_eval_item_keeps_native_ground_truth_of_a_rotated_drafted_jpeg(tmp_path: Path, write_image, write_mask):
    # Stored 200x160 with orientation 6: upright 160x200, decoded through a 1/8 draft for a 16 px side.
    image_path = write_image(tmp_path / "images" / "r.jpg", size=(200, 160), exif_orientation=6)
    mask_path = write_mask(tmp_path / "masks" / "r_mask.png", size=(160, 200))
    item = Trans10kEval([Sample(image_path, mask_path, "r", "test", "hard")], resolution=16)[0]

    assert item["gt_classes"].shape == (200, 160)  # (H, W) of the upright image, not of the draft
    assert item["gt_classes"].dtype == torch.uint8
    assert item["gt_classes"][0, 0] == THINGS_CLASS and item["gt_classes"][0, -1] == STUFF_CLASS
    assert item["gt_classes"][-1, -1] == BACKGROUND_CLASS
    assert item["pixel_values"].shape == item["mask_values"].shape == (3, 16, 16)
    assert item["stem"] == "r" and item["subset"] == "hard"
    # The 16x16 mask is the nearest-neighbour resize of the binary ground truth.
    expected = torch.from_numpy(np.array(Image.fromarray(item["gt_classes"].numpy() > 0).resize((16, 16))))
    assert torch.equal(item["mask_values"][0] > 0, expected)


def test_eval_collate_stacks_tensors_and_lists_the_rest(tree: Path) -> None:
    dataset = Trans10kEval(find_samples(tree, "test"), resolution=16)
    batch = eval_collate([dataset[0], dataset[3]])
    assert batch["pixel_values"].shape == batch["mask_values"].shape == (2, 3, 16, 16)
    assert [g.shape for g in batch["gt_classes"]] == [(30, 40), (30, 40)]
    assert batch["stem"] == ["teeasy0", "tehard1"] and batch["subset"] == ["easy", "hard"]


def test_image_files_give_model_pixels_and_the_upright_native_image(tmp_path: Path, write_image) -> None:
    rotated = write_image(tmp_path / "rotated.jpg", size=(40, 30), exif_orientation=6)  # upright 30 wide, 40 high
    odd = write_image(tmp_path / "odd.png", size=(33, 50))
    dataset = ImageFiles([rotated, odd], resolution=16)
    batch = eval_collate([dataset[0], dataset[1]])  # the one collate of evaluation and prediction
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert [image.shape for image in batch["image"]] == [(40, 30, 3), (50, 33, 3)]
    assert all(image.dtype == np.uint8 for image in batch["image"])
    assert batch["stem"] == ["rotated", "odd"]
    assert torch.equal(batch["pixel_values"][0], model_pixels(load_image(rotated), 16, (16, 16)))
    with pytest.raises(ValueError, match="resolution"):
        ImageFiles([odd], resolution=0)


def test_drafted_jpeg_crop_matches_a_full_size_decode(tmp_path: Path, write_mask, monkeypatch) -> None:
    x, y = np.meshgrid(np.arange(320), np.arange(240))
    gradient = np.stack([x * 255 // 319, y * 255 // 239, (x + y) * 255 // 558], axis=-1).astype(np.uint8)
    image_path = tmp_path / "gradient.jpg"
    Image.fromarray(gradient).save(image_path, quality=95)
    sample = Sample(image_path, write_mask(tmp_path / "gradient_mask.png", size=(320, 240)), "gradient", "train", "")
    draft_factors: list[int] = []

    def recording_draft_jpeg(image: Image.Image, min_size: tuple[int, int]) -> int:
        draft_factors.append(transforms.draft_jpeg(image, min_size))
        return draft_factors[-1]

    monkeypatch.setattr(trans10k, "draft_jpeg", recording_draft_jpeg)
    dataset = _train([sample], random_flip=False, random_crop_scale=0.3)

    for aug_seed in range(5):
        item = dataset[(0, aug_seed)]
        generator = torch.Generator().manual_seed(aug_seed)
        augmentation = transforms.sample_train_augmentation((320, 240), generator, False, 0.0, 0.3)
        full_decode = Image.open(image_path).convert("RGB")
        reference = full_decode.resize((16, 16), transforms.IMAGE_RESAMPLE, box=augmentation.crop_box)
        assert (item["pixel_values"] - transforms.image_to_tensor(reference)).abs().mean() < 0.03
    assert max(draft_factors) > 1  # the reduced decode was really used


# ---------------------------------------------------------------------------------------------------------------------
# processing: keep_aspect


def _write_wide_position_pair(root: Path, width: int = 48, height: int = 16) -> Sample:
    """PNG whose red/green channels encode x/y and an asymmetric mask (left quarter, top half), width > height."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([x * 5, y * 15, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    image_path, mask_path = root / "wide.png", root / "wide_mask.png"
    Image.fromarray(pixels).save(image_path)
    Image.fromarray(((x < width // 4) & (y < height // 2)).astype(np.uint8) * 255).save(mask_path)
    return Sample(image_path, mask_path, "wide", "train", "")


def test_keep_aspect_train_pair_is_top_left_and_a_flip_keeps_the_padding_where_it_was(tmp_path: Path) -> None:
    dataset = _train([_write_wide_position_pair(tmp_path)], resolution=24, processing="keep_aspect")
    content = np.zeros((24, 24), dtype=np.float32)
    content[:8, :24] = 1  # 48x16 -> 24x8 in the top-left corner
    items = {}
    for aug_seed in range(16):
        item = dataset[(0, aug_seed)]
        items[bool(item["pixel_values"][0, 0, 0] > item["pixel_values"][0, 0, -1])] = item  # red falls: flipped
        np.testing.assert_array_equal(item["valid_mask"][0].numpy(), content)
        for key in ("pixel_values", "mask_values"):
            assert item[key].shape == (3, 24, 24)
            below = item[key][:, 8:, :]  # the padding replicates the content's last row
            assert torch.equal(below, item[key][:, 7:8, :].expand_as(below)), key
    plain, flipped = items[False], items[True]  # some seeds flip, some do not
    for key in ("pixel_values", "mask_values"):  # the flip mirrors the content only
        assert torch.equal(flipped[key][:, :8], plain[key][:, :8].flip(-1)), key
    assert (plain["mask_values"][0, :4, :6] > 0).all() and (flipped["mask_values"][0, :4, -6:] > 0).all()


def test_square_items_have_an_all_ones_valid_mask_and_the_whole_canvas_as_content(tree: Path) -> None:
    assert torch.equal(_train(find_samples(tree, "train"))[0]["valid_mask"], torch.ones(1, 16, 16))
    item = Trans10kEval(find_samples(tree, "test"), resolution=16)[0]
    assert item["content_size"] == (16, 16) and torch.equal(item["valid_mask"], torch.ones(1, 16, 16))


def test_keep_aspect_eval_item_fits_the_full_size_of_a_rotated_drafted_jpeg(tmp_path: Path, write_image, write_mask):
    # Stored 200x120 with orientation 6: upright 120 wide, 200 high; 16 px long side -> content 16 x round(9.6) = 10.
    image_path = write_image(tmp_path / "images" / "r.jpg", size=(200, 120), exif_orientation=6)
    mask_path = write_mask(tmp_path / "masks" / "r_mask.png", size=(120, 200))
    sample = Sample(image_path, mask_path, "r", "test", "hard")
    item = Trans10kEval([sample], resolution=16, processing="keep_aspect")[0]
    assert item["content_size"] == (16, 10)
    assert item["gt_classes"].shape == (200, 120)
    expected_valid = torch.zeros(1, 16, 16)
    expected_valid[:, :, :10] = 1
    assert torch.equal(item["valid_mask"], expected_valid)
    # The canvas mask is the nearest resize of the native ground truth to the content box, padded by its last column.
    gt = Image.fromarray(item["gt_classes"].numpy() > 0)
    expected = torch.from_numpy(np.array(gt.resize((10, 16), Image.Resampling.NEAREST)))
    assert torch.equal(item["mask_values"][0, :, :10] > 0, expected)
    assert torch.equal(item["mask_values"][:, :, 10:], item["mask_values"][:, :, 9:10].expand(3, 16, 6))
    drafted = load_image(image_path, draft_size=(10, 16))  # decoded at 1/8: 15 x 25, then fitted to the 10 x 16 box
    assert drafted.size == (15, 25)
    assert torch.equal(item["pixel_values"], model_pixels(drafted, 16, (16, 10)))
    batch = eval_collate([item, item])
    assert batch["valid_mask"].shape == (2, 1, 16, 16) and batch["content_size"] == [(16, 10), (16, 10)]


def test_keep_aspect_image_files_carry_the_content_box(tmp_path: Path, write_image) -> None:
    odd = write_image(tmp_path / "odd.png", size=(33, 50))  # 50 high: 16 x round(10.56) = 11
    item = ImageFiles([odd], resolution=16, processing="keep_aspect")[0]
    assert item["content_size"] == (16, 11) and item["image"].shape == (50, 33, 3)
    assert float(item["valid_mask"].sum()) == 16 * 11 and float(item["valid_mask"][0, :, :11].min()) == 1
    canvas = np.asarray(Image.fromarray(item["image"]).resize((11, 16), transforms.IMAGE_RESAMPLE))
    expected = transforms.image_to_tensor(Image.fromarray(transforms.pad_to_canvas(canvas, 16)))
    assert torch.equal(item["pixel_values"], expected)
    with pytest.raises(ValueError, match="processing"):
        ImageFiles([odd], resolution=16, processing="letterbox")
