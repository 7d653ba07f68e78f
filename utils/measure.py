"""Sizes and memory of a run, as the trainer logs them and the benchmarks print them."""

from __future__ import annotations

from pathlib import Path

import torch


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reset_peak_memory(device: torch.device) -> None:
    """CUDA: reset the allocator's peak. CPU: reset the process's peak RSS (Linux /proc/self/clear_refs, value 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then covers the whole process lifetime


def peak_memory_gib(device: torch.device) -> float | None:
    """CUDA: peak memory allocated by tensors. CPU: peak resident set size of the whole process (VmHWM); None where
    the system does not say (not Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None
