"""The mask encodings (mask_classes binary | things_stuff): encoding, the read-back rule, the loss targets and the
cache's packed ground truth, each against an independent statement of dataset.transforms' rule."""

import numpy as np
import pytest
import torch

from dataset.latent_cache import pack_gt_mask, unpack_gt_mask
from dataset.transforms import (
    TARGET_CHANNELS,
    grey_to_classes,
    loss_channels,
    mask_planes,
    mask_to_tensor,
    planes_to_classes,
    target_channels,
)
from evaluation.scoring import class_map_at, quantize, resize_raw
from models.losses import EPS, bce_dice

# Every grey level a mask may hold: the official 0 / 85 / 255 and anti-aliased levels on both sides of 170.
GREYS = np.array([[0, 1, 60, 85, 120], [169, 170, 200, 254, 255]], dtype=np.uint8)
EXPECTED_CLASSES = np.array([[0, 1, 1, 1, 1], [1, 2, 2, 2, 2]], dtype=np.uint8)


def decoded_exactly(mask_values: torch.Tensor) -> torch.Tensor:
    """What a perfect VAE round trip gives: the mask image mapped from [-1, 1] to [0, 1]."""
    return (mask_values[None] + 1) / 2


def test_the_class_rule_is_trans10ks_nearest_level():
    assert np.array_equal(grey_to_classes(GREYS), EXPECTED_CLASSES)


def test_things_stuff_is_three_grey_levels_in_every_channel():
    values = mask_to_tensor(GREYS, "things_stuff")
    assert values.shape == (3, *GREYS.shape) and values.dtype == torch.float32
    assert torch.equal(values[0], values[1]) and torch.equal(values[0], values[2])
    level = {0: -1.0, 1: 0.0, 2: 1.0}
    assert torch.equal(values[0], torch.tensor(np.vectorize(level.get)(EXPECTED_CLASSES), dtype=torch.float32))


def test_binary_is_the_transparent_mask_in_every_channel():
    values = mask_to_tensor(GREYS, "binary")
    assert torch.equal(values, torch.where(torch.from_numpy(GREYS > 0), 1.0, -1.0).expand(3, -1, -1))


@pytest.mark.parametrize("mask_classes", ["binary", "things_stuff"])
def test_a_perfect_round_trip_reads_back_the_classes(mask_classes):
    planes = mask_planes(decoded_exactly(mask_to_tensor(GREYS, mask_classes)), mask_classes)[0]
    assert torch.equal(planes[0] >= 0.5, torch.from_numpy(GREYS > 0))  # raw: the binary prediction
    if mask_classes == "things_stuff":
        assert planes.shape[0] == 2
        assert np.array_equal(planes_to_classes(planes[0], planes[1], 0.5).numpy(), EXPECTED_CLASSES)
    else:
        assert planes.shape[0] == 1


def test_the_decoding_rule_at_the_boundaries_between_levels():
    """m = grey level in [0, 1]: background below 1/4, things up to 3/4, stuff above (mid-points of 0, 1/2, 1)."""
    m = torch.tensor([0.0, 0.24, 0.26, 0.5, 0.74, 0.76, 1.0])
    decoded = m[None, None].expand(1, 3, 1, -1)
    raw, stuff = mask_planes(decoded, "things_stuff")[0, :, 0]
    torch.testing.assert_close(raw, torch.clamp(2 * m, 0, 1))
    torch.testing.assert_close(stuff, torch.clamp(2 * m - 1, 0, 1))
    assert planes_to_classes(raw, stuff, 0.5).tolist() == [0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("mask_classes, channels", [("binary", 1), ("things_stuff", 2)])
def test_loss_targets_and_the_cache_packing(mask_classes, channels):
    values = mask_to_tensor(GREYS, mask_classes)
    targets = target_channels(values[None], mask_classes)[0]
    assert targets.shape == (channels, *GREYS.shape) and targets.dtype == torch.bool
    assert TARGET_CHANNELS[mask_classes] == channels  # what the cache unpacks
    assert torch.equal(targets[0], torch.from_numpy(GREYS > 0))
    if channels == 2:
        assert torch.equal(targets[1], torch.from_numpy(EXPECTED_CLASSES == 2))
    square = mask_to_tensor(np.resize(GREYS, (8, 8)), mask_classes)  # the cache stores square masks
    unpacked = unpack_gt_mask(pack_gt_mask(square, mask_classes), 8, channels)
    assert torch.equal(unpacked, target_channels(square[None], mask_classes)[0])


def test_the_class_loss_is_at_its_floor_for_a_perfect_decode_and_grows_with_a_class_error():
    values = mask_to_tensor(GREYS, "things_stuff")
    targets = target_channels(values[None], "things_stuff")
    perfect = loss_channels(decoded_exactly(values), "things_stuff").requires_grad_()
    loss = bce_dice(perfect, targets)
    loss.backward()
    floor = -np.log(1 - EPS)  # BCE of a clamped perfect prediction; soft Dice is 0 up to its smoothing
    assert loss.item() == pytest.approx(floor + dice_of_perfect(targets), abs=1e-6)
    assert torch.count_nonzero(perfect.grad) == 0
    swapped = values.clone()
    swapped[:, 1, 1:] = 0.0  # stuff pixels at the things level: only the stuff channel is wrong
    assert bce_dice(loss_channels(decoded_exactly(swapped), "things_stuff"), targets) > loss + 0.1


def dice_of_perfect(targets: torch.Tensor) -> float:
    """Soft Dice of a prediction equal to the target clamped into [EPS, 1 - EPS], per channel, then the mean."""
    probability = targets.float().clamp(EPS, 1 - EPS)
    intersection = (probability * targets).sum((2, 3))
    total = probability.sum((2, 3)) + targets.float().sum((2, 3))
    return (1 - (2 * intersection + 1) / (total + 1)).mean().item()


def test_class_maps_agree_with_the_native_binary_prediction():
    """A pixel is transparent in the written class map exactly when the scored (resized, 8-bit) raw is >= threshold."""
    generator = torch.Generator().manual_seed(0)
    planes = torch.rand(2, 13, 17, generator=generator)
    size = (40, 31)
    classes = class_map_at(planes, size, 0.5)
    assert classes.shape == size and classes.dtype == torch.uint8
    assert torch.equal(classes > 0, quantize(resize_raw(planes[0], size)) >= 0.5)
    stuff = resize_raw(planes[1], size) > 0.5
    assert torch.equal(classes == 2, (classes > 0) & stuff)
