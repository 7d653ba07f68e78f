"""config.yaml is the one source of truth: DeepSpeed values that are not "auto" must agree with it.

Mismatched batch sizes are the most common DeepSpeed failure users report, and Accelerate resolves some of them
silently (it prefers ds_config's gradient_accumulation_steps with only a warning). We stop at start-up instead.
"""

from __future__ import annotations

import argparse


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def deepspeed_mismatches(ds_config: dict, args: argparse.Namespace, num_processes: int) -> list[str]:
    """Every non-auto DeepSpeed value that disagrees with the run's settings, both values shown."""
    expected = {
        "train_micro_batch_size_per_gpu": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": args.train_batch_size * args.gradient_accumulation_steps * num_processes,
        "gradient_clipping": args.max_grad_norm,
        "bf16.enabled": args.mixed_precision == "bf16",
        "fp16.enabled": args.mixed_precision == "fp16",
    }
    problems = []
    for key, wanted in expected.items():
        value = _get(ds_config, key)
        if value is None or value == "auto":
            continue
        if isinstance(wanted, bool):
            value = str(value).lower() == "true"
        if value != wanted:
            problems.append(f"ds_config {key} = {value!r} but config.yaml gives {wanted!r}")
    return problems


def check_deepspeed_config(ds_config: dict, args: argparse.Namespace, num_processes: int) -> None:
    """Raise with all mismatches; fill "auto" gradient clipping from max_grad_norm (Accelerate would use 1.0)."""
    problems = deepspeed_mismatches(ds_config, args, num_processes)
    if problems:
        raise ValueError(
            "DeepSpeed config disagrees with config.yaml:\n  "
            + "\n  ".join(problems)
            + '\nSet these keys to "auto" in ds_config.json (Accelerate then fills them from config.yaml) '
            "or change config.yaml to match."
        )
    if ds_config.get("gradient_clipping", "auto") == "auto":
        ds_config["gradient_clipping"] = args.max_grad_norm
