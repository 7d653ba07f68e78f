"""config.yaml is the one source of truth: DeepSpeed values that are not "auto" must agree with it.

Mismatched batch sizes are the most common DeepSpeed failure users report, and Accelerate resolves some of them
silently (it prefers ds_config's gradient_accumulation_steps with only a warning). We stop at start-up instead.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env


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


def launch_mismatch(
    requested_deepspeed: bool, world_size: int, got_deepspeed: bool, got_processes: int, env: Mapping[str, str]
) -> str:
    """Why the distributed setup Accelerate built differs from the one the launcher asked for, or "" if it does not."""
    problems = []
    if requested_deepspeed and not got_deepspeed:
        problems.append("DeepSpeed was requested (--use_deepspeed / distributed_type DEEPSPEED) but is not in use")
    if got_processes != world_size:
        problems.append(f"the launcher started {world_size} processes but Accelerate runs {got_processes}")
    if not problems:
        return ""
    cpu_flag = env.get("ACCELERATE_USE_CPU", "")
    cause = (
        f"ACCELERATE_USE_CPU={cpu_flag} is set in the environment, which makes Accelerate run on the CPU without "
        "DeepSpeed or several processes; `unset ACCELERATE_USE_CPU` (or remove use_cpu from the accelerate config)"
        if cpu_flag.lower() in ("1", "true", "yes")
        else "check `accelerate env`, the accelerate config file and the ACCELERATE_* environment variables"
    )
    return "; ".join(problems) + f". Cause and fix: {cause}. Training stops here rather than run something else."


def check_launch_matches_request(accelerator: Accelerator) -> None:
    """No silent fallback: stop when Accelerate dropped DeepSpeed or processes the launcher asked for."""
    message = launch_mismatch(
        requested_deepspeed=parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        got_deepspeed=accelerator.distributed_type == DistributedType.DEEPSPEED,
        got_processes=accelerator.num_processes,
        env=os.environ,
    )
    if message:
        raise RuntimeError(message)
