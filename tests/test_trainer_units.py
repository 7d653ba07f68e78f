"""The trainer's planning helpers, fast: the LR schedule and the step plan (the launched runs: test_trainer*.py)."""

import argparse
import math

import pytest
import torch

from trainer import build_lr_scheduler, train_steps_plan


def schedule(name: str, num_cycles: float, steps: int = 10, warmup: int = 2) -> list[float]:
    args = argparse.Namespace(lr_scheduler=name, lr_warmup_steps=warmup, lr_num_cycles=num_cycles, lr_power=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(args, optimizer, steps)
    lrs = []
    for _ in range(steps + 1):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("num_cycles", [0.5, 1.0, 1.5])
def test_cosine_follows_lr_num_cycles(num_cycles):
    lrs = schedule("cosine", num_cycles)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])  # linear warm-up over 2 steps
    for step in range(2, 11):  # the formula the config comment describes: num_cycles cosine periods over the decay
        progress = (step - 2) / 8
        assert lrs[step] == pytest.approx(0.5 * (1 + math.cos(2 * math.pi * num_cycles * progress)), abs=1e-12)


def test_cosine_with_one_cycle_comes_back_up_and_half_a_cycle_ends_at_zero():
    assert schedule("cosine", 1.0)[-1] == pytest.approx(1.0)
    assert schedule("cosine", 0.5)[-1] == pytest.approx(0.0, abs=1e-12)


def test_other_schedulers_reach_their_end_at_max_train_steps():
    assert schedule("linear", 0.5)[-1] == pytest.approx(0.0)
    assert schedule("constant_with_warmup", 0.5)[-1] == pytest.approx(1.0)
    restarts = schedule("cosine_with_restarts", 2)
    assert restarts[6] == pytest.approx(1.0) and restarts[-1] == 0.0  # the second of two decays starts at step 6


@pytest.mark.parametrize(
    "batches, accumulation, max_steps, epochs, expected",
    [
        (6, 2, None, 2, (3, 6, 2)),
        (3, 2, None, 2, (2, 4, 2)),  # a partial window at the end of an epoch is one more optimizer step
        (3, 2, 8, 40, (2, 8, 4)),  # max_train_steps wins over num_train_epochs
    ],
)
def test_step_plan(batches, accumulation, max_steps, epochs, expected):
    args = argparse.Namespace(
        gradient_accumulation_steps=accumulation,
        max_train_steps=max_steps,
        num_train_epochs=epochs,
        train_batch_size=4,
    )
    assert train_steps_plan(args, batches, num_processes=1) == expected


def test_step_plan_refuses_a_split_smaller_than_one_batch():
    args = argparse.Namespace(
        gradient_accumulation_steps=1, max_train_steps=None, num_train_epochs=1, train_batch_size=4
    )
    with pytest.raises(ValueError, match="fewer images than one global batch"):
        train_steps_plan(args, 0, num_processes=2)


def test_a_resumed_run_must_beat_the_kept_best_and_a_fresh_run_replaces_it(tmp_path):
    from accelerate import PartialState

    from trainer import best_iou_so_far, validation_subset
    from utils.checkpointing import save_best_checkpoint

    PartialState(cpu=True)  # the trainer logs through accelerate's logger

    args = argparse.Namespace(output_dir=str(tmp_path))
    assert best_iou_so_far(args, resumed=True) == -math.inf  # no checkpoint-best yet
    save_best_checkpoint(lambda folder: folder.mkdir(), tmp_path, {"step": 3, "val/iou": 0.625}, True, lambda: None)
    assert best_iou_so_far(args, resumed=True) == 0.625
    assert best_iou_so_far(args, resumed=False) == -math.inf
    samples = list(range(10))
    assert validation_subset(samples, 0) == samples and validation_subset(samples, 20) == samples
    assert validation_subset(samples, 3) == [0, 4, 9]  # spread over the split (its subsets come in order)
