"""bench.flops_and_memory's tracker: its faster peak bookkeeping gives MemTracker's own numbers."""

from __future__ import annotations

import pytest
from torch.distributed._tools.mem_tracker import MemTracker

from bench import flops_and_memory
from demo.assets import TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG


class LibraryPeakTracker(flops_and_memory.StepMemTracker):
    """StepMemTracker with MemTracker's own walk over every tracked module after each op."""

    _update_peak_stats = MemTracker._update_peak_stats


def tracked_step(monkeypatch, tracker_class: type, train_mode: str, checkpointing: bool) -> flops_and_memory.MemoryRun:
    """track_training_memory's two steps (VAE encodes, transformer forward + backward, AdamW) on the tiny models."""
    # Two layers, one with dual attention: MemTracker's own bookkeeping (the reference) costs ~10x the step's time.
    transformer_config = {**TINY_TRANSFORMER_CONFIG, "num_layers": 2, "dual_attention_layers": (0,)}
    monkeypatch.setattr(flops_and_memory, "SD35_MEDIUM_TRANSFORMER_CONFIG", transformer_config)
    vae_config = {**TINY_VAE_CONFIG, "shift_factor": 0.1, "scaling_factor": 1.5}  # the demo builder calibrates these
    monkeypatch.setattr(flops_and_memory, "SD35_MEDIUM_VAE_CONFIG", vae_config)
    monkeypatch.setattr(flops_and_memory, "StepMemTracker", tracker_class)
    args = flops_and_memory.parse_args(["--resolution", "64", "--train_mode", train_mode, "--lora_rank", "4"])
    return flops_and_memory.track_training_memory(args, gradient_checkpointing=checkpointing)


@pytest.mark.parametrize(("train_mode", "checkpointing"), [("lora", True), ("full", False)])
def test_peaks_equal_memtrackers_own(monkeypatch, train_mode: str, checkpointing: bool) -> None:
    fast = tracked_step(monkeypatch, flops_and_memory.StepMemTracker, train_mode, checkpointing)
    library = tracked_step(monkeypatch, LibraryPeakTracker, train_mode, checkpointing)
    assert set(fast.moments) == {"overall peak", "transformer forward peak", "transformer backward peak"}
    assert fast.moments == library.moments
    assert fast.peak == library.peak
    # Not a comparison of two empty records: the step holds weights and activations, and the adapters or the full
    # model are what the optimizer keeps states for.
    assert fast.peak["weights"] > 0 and fast.peak["activations"] > 0
    assert fast.moments["transformer backward peak"]["optimizer states"] > 0


def test_checkpointing_lowers_the_tracked_activations(monkeypatch) -> None:
    plain = tracked_step(monkeypatch, flops_and_memory.StepMemTracker, "lora", checkpointing=False)
    checkpointed = tracked_step(monkeypatch, flops_and_memory.StepMemTracker, "lora", checkpointing=True)
    forward_peak = "transformer forward peak"
    assert checkpointed.moments[forward_peak]["activations"] < plain.moments[forward_peak]["activations"]
    assert checkpointed.moments[forward_peak]["weights"] == plain.moments[forward_peak]["weights"]
