"""A/B of the accuracy levers on the demo: each variant trained with configs/demo.yaml and 2 seeds, then evaluated.

    python -m bench.demo_ab                                  # every variant, seeds 42 and 1 (~6 min per run, 2 cores)
    python -m bench.demo_ab --variants latent_mse pixel --seeds 42

Every variant changes one thing against `make demo` (the `latent_mse` row). A variant that only changes evaluation
(`tta_hflip`) re-evaluates the `latent_mse` run of the same seed. Runs go to outputs/ab/<variant>-s<seed>/ and are
reused when their metrics.json exists, so an interrupted A/B continues where it stopped. Prints one markdown table:
mix IoU and Boundary IoU (dataset-pooled, Trans10k-layout test split of the demo data, native protocol), training
wall time and seconds per optimizer step (the trainer process from start to exit, cache building included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.tables import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_1proc.yaml"]


@dataclass(frozen=True)
class Variant:
    train_args: tuple[str, ...] = ()  # trainer.py flags on top of configs/demo.yaml
    eval_args: tuple[str, ...] = ()  # val_inference.py flags on top of configs/demo.yaml
    trained_as: str | None = None  # reuse this variant's training run (evaluation-only variants)


KEEP = "keep_aspect"
# Equal wall clock for the pixel losses: in trainer.py's loop on the quiet 2-core CPU (2026-12-02) a configs/demo.yaml
# step took 138 ms with latent_mse (2400 steps in 332 s, validation and checkpoints included) and 205 ms with pixel or
# latent_mse+pixel (1100 steps in 217-225 s), so the latent run's 332 s hold 332 / 0.205 ~ 1600 pixel steps (the
# cosine schedule spans them). A first try took 1100 steps from the bare step's ratio, 2.2x (bench.train_throughput
# --loss, 1 thread): the trainer's 2 threads and its fixed per-step work make the ratio 1.5x.
EQUAL_TIME = ("--max_train_steps", "1600")
# keep_aspect cannot train from cached latents (utils.config.check_combinations), so its square twin trains uncached
# too: the two rows differ in processing only.
VARIANTS = {
    "latent_mse": Variant(),
    "pixel": Variant(("--loss", "pixel")),
    "latent_mse+pixel": Variant(("--loss", "latent_mse+pixel")),
    "pixel_equal_time": Variant(("--loss", "pixel", *EQUAL_TIME)),
    "latent_mse+pixel_equal_time": Variant(("--loss", "latent_mse+pixel", *EQUAL_TIME)),
    "tta_hflip": Variant(eval_args=("--tta", "hflip"), trained_as="latent_mse"),
    "square_uncached": Variant(("--cache_latents", "false")),
    "keep_aspect": Variant(("--cache_latents", "false", "--processing", KEEP), ("--processing", KEEP)),
}


def run(command: list[str], log: Path) -> float:
    """Run a command with its output in `log`; seconds it took. Fails loudly, naming the log."""
    start = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - start


def train(name: str, seed: int, root: Path) -> tuple[Path, dict]:
    """The variant's training run (trained once, reused); its timing record."""
    run_dir = root / f"{name}-s{seed}"
    record_path = run_dir / "ab_train.json"
    if record_path.is_file():
        return run_dir, json.loads(record_path.read_text())
    flags = ["--config", "configs/demo.yaml", "--output_dir", str(run_dir), "--seed", str(seed)]
    run_dir.mkdir(parents=True, exist_ok=True)
    seconds = run([*LAUNCH, "trainer.py", *flags, *VARIANTS[name].train_args], root / f"{name}-s{seed}.train.log")
    steps = max(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-[0-9]*"))
    record = {"train_seconds": seconds, "steps": steps}
    record_path.write_text(json.dumps(record))
    return run_dir, record


def evaluate(name: str, seed: int, run_dir: Path, root: Path) -> dict:
    out_dir = root / f"{name}-s{seed}.eval"
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.is_file():
        flags = ["--config", "configs/demo.yaml", "--transformer_path", str(run_dir), "--eval_output_dir"]
        # tta none unless the variant says otherwise: configs/demo.yaml evaluates with hflip since that A/B, and every
        # other variant is compared with the tta-none latent_mse row.
        flags += [str(out_dir), "--tta", "none"]
        run([*LAUNCH, "val_inference.py", *flags, *VARIANTS[name].eval_args], root / f"{name}-s{seed}.eval.log")
    return json.loads(metrics_path.read_text())["subsets"]["mix"]["dataset"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1])
    parser.add_argument("--root", type=Path, default=REPO_ROOT / "outputs" / "ab")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    for name in args.variants:
        for seed in args.seeds:
            run_dir, record = train(VARIANTS[name].trained_as or name, seed, args.root)
            mix = evaluate(name, seed, run_dir, args.root)
            seconds, steps = record["train_seconds"], record["steps"]
            rows.append(
                [name, str(seed), f"{mix['iou']:.4f}", f"{mix['boundary_iou']:.4f}", f"{seconds:.0f}", str(steps)]
                + [f"{seconds / steps * 1000:.1f}"]
            )
            print(" | ".join(rows[-1]), flush=True)
    header = ["variant", "seed", "mix IoU", "mix Boundary IoU", "train s", "steps", "ms / step"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
