"""Full-size architecture smoke test: the real entry points on a random-weight SD3.5-medium in the hub layout.

    .venv/bin/python bench/full_size_smoke.py [--resolution 256] [--images 3] [--workdir /tmp/full_size_smoke]
    python bench/full_size_smoke.py --device cuda     # on a GPU machine: 1024 px, bf16 (written for it, not yet run)
    python bench/full_size_smoke.py --count_only      # only the host-RAM count of the reference training setup

1. Builds, once (cached in the workdir), a model folder in the exact layout and with the classes of
   stabilityai/stable-diffusion-3.5-medium (model_index.json, transformer/, vae/, text_encoder{,_2,_3}/,
   tokenizer{,_2,_3}/, scheduler/), random weights, safetensors in bf16 as the hub ships them: the real
   SD3Transformer2DModel (2.24B parameters) and AutoencoderKL configs; text encoders at their real widths (CLIP-L 768,
   CLIP-G 1280, T5-XXL d_model 4096) with 1 layer each; tokenizers of demo.assets with the real lengths
   (CLIP pads to 77, T5 to max_sequence_length 256: 333 text tokens).
2. Writes N synthetic Trans10k-layout test images (dataset.synthetic scenes at photo-like, non-square sizes).
3. Runs, as subprocesses and exactly as a user would: trainer.py's per-rank load of the fp32 transformer
   (models.loading.load_base_transformer), `accelerate launch val_inference.py` and `python predict.py`; checks their
   outputs (metrics, native-size PNGs, the 333-token conditioning) and measures wall time, start-up, seconds per image
   (from the arrival times of tqdm's progress lines) and peak RSS (wait4 on the child; RssAnon sampled at 2 Hz).
4. Prints the host RAM of the reference training setup (accelerate_config.yaml + ds_config.json), counted from the
   meta-device models: a count, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python bench/full_size_smoke.py): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import build_transformer, build_vae, default_dtype, fmt  # noqa: E402
from demo.assets import SD35_MEDIUM_TRANSFORMER_CONFIG, SD35_MEDIUM_VAE_CONFIG  # noqa: E402
from utils.config import REPO_ROOT, parse_config  # noqa: E402
from utils.measure import count_parameters  # noqa: E402
from utils.tables import markdown_table  # noqa: E402

DEFAULT_WORKDIR = Path("/tmp/full_size_smoke")
TEXT_ENCODER_LAYERS = 1  # the smoke's text encoders: real widths, 1 layer each
CLIP_MAX_LENGTH = 77  # SD3.5's CLIP tokenizers pad to 77 tokens

# The text encoders of stabilityai/stable-diffusion-3.5-medium (text_encoder{,_2,_3}/config.json): CLIP ViT-L/14,
# OpenCLIP ViT-bigG/14, T5 v1.1 XXL encoder. The smoke builds them with TEXT_ENCODER_LAYERS layers; the host-RAM
# count uses the full depth. Token ids follow demo.assets' character vocabularies.
CLIP_L_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "max_position_embeddings": 77,
}
CLIP_G_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
    "max_position_embeddings": 77,
}
T5_XXL_CONFIG = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
}
CLIP_TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # demo.assets.build_clip_pair
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GIB = 2**30


# ---------------------------------------------------------------------------------------------------------------------
# The model folder and the data


def build_model_folder(model_dir: Path, weights_dtype: str, seed: int) -> None:
    """The SD3.5-medium hub layout with random weights, written by StableDiffusion3Pipeline.save_pretrained."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from demo.assets import build_clip_pair, build_t5, transformers_progress_bars_disabled

    dtype = WEIGHT_DTYPES[weights_dtype]
    tokenizers = {}
    for name, tokenizer_seed in (("tokenizer", seed), ("tokenizer_2", seed + 1)):
        tokenizer = build_clip_pair(tokenizer_seed)[1]  # the demo's character vocabulary; its tiny model is dropped
        tokenizer.model_max_length = CLIP_MAX_LENGTH
        tokenizers[name] = tokenizer
    tokenizers["tokenizer_3"] = build_t5(seed + 2)[1]  # pads to max_sequence_length like the real one

    def text_encoder(model_class, config, model_seed: int):
        torch.manual_seed(model_seed)
        with default_dtype(dtype):
            return model_class(config).eval()

    layers = {"num_hidden_layers": TEXT_ENCODER_LAYERS}
    encoders = {
        "text_encoder": text_encoder(
            CLIPTextModelWithProjection, CLIPTextConfig(**{**CLIP_L_CONFIG, **layers, **CLIP_TOKEN_IDS}), seed + 3
        ),
        "text_encoder_2": text_encoder(
            CLIPTextModelWithProjection, CLIPTextConfig(**{**CLIP_G_CONFIG, **layers, **CLIP_TOKEN_IDS}), seed + 4
        ),
        "text_encoder_3": text_encoder(
            T5EncoderModel, T5Config(**{**T5_XXL_CONFIG, "num_layers": TEXT_ENCODER_LAYERS}), seed + 5
        ),
    }
    transformer = build_transformer(SD35_MEDIUM_TRANSFORMER_CONFIG, "cpu", dtype, seed + 6)
    # The positional-embedding table is created in fp32; the hub file holds it in bf16 like every other tensor.
    transformer.pos_embed.pos_embed = transformer.pos_embed.pos_embed.to(dtype)
    vae = build_vae(SD35_MEDIUM_VAE_CONFIG, "cpu", dtype, seed + 7)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),  # SD3.5's scheduler config
        **encoders,
        **tokenizers,
    )
    with transformers_progress_bars_disabled():
        pipeline.save_pretrained(model_dir)  # safetensors, as the hub
    del pipeline, transformer, vae, encoders
    gc.collect()


def ensure_model_folder(workdir: Path, weights_dtype: str, seed: int, force: bool) -> tuple[Path, float | None]:
    """(folder, build seconds or None when a complete cached build was reused)."""
    from demo.assets import building, is_complete

    model_dir = workdir / f"sd35-medium-random-{weights_dtype}"
    params = {"weights_dtype": weights_dtype, "seed": seed, "text_encoder_layers": TEXT_ENCODER_LAYERS}
    if not force and is_complete(model_dir, params):
        print(f"model folder: {model_dir} is complete, reused", flush=True)
        return model_dir, None
    need = expected_folder_bytes(weights_dtype) + GIB
    check_disk(workdir, need)
    print(f"building {model_dir} (random weights, {weights_dtype}, ~{need / GIB:.1f} GiB) ...", flush=True)
    started = time.perf_counter()
    with building(model_dir, params) as temp_dir:
        build_model_folder(temp_dir, weights_dtype, seed)
    seconds = time.perf_counter() - started
    print(f"model folder built in {seconds:.0f} s: {folder_size(model_dir) / GIB:.2f} GiB on disk", flush=True)
    return model_dir, seconds


def expected_folder_bytes(weights_dtype: str) -> int:
    """Rough size of the folder on disk: the transformer's state dict dominates."""
    size = WEIGHT_DTYPES[weights_dtype].itemsize
    return int(2.47e9 * size + 0.5e9 * size)  # transformer (params + pos_embed) + 1-layer text encoders and VAE


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def image_size(index: int, width: int, height: int) -> tuple[int, int]:
    """Landscape and portrait in turn: (width, height)."""
    return (width, height) if index % 2 == 0 else (height, width)


def ensure_data(workdir: Path, num_images: int, width: int, height: int, seed: int) -> tuple[Path, list[str]]:
    """A Trans10k test split (easy gets the odd image) of synthetic scenes upscaled to photo-like sizes."""
    from dataset.synthetic import EASY, HARD, make_split_dir, write_scene
    from demo.assets import building, is_complete

    counts = {"easy": (num_images + 1) // 2, "hard": num_images // 2}
    subsets = [subset for subset, count in counts.items() if count]
    data_dir = workdir / "trans10k"
    params = {"counts": counts, "size": [width, height], "seed": seed, "scene_rng": "seed, subset index, number"}
    if is_complete(data_dir, params):
        return data_dir, subsets
    with building(data_dir, params) as temp_dir:
        index = 0
        for subset_index, (subset, difficulty) in enumerate((("easy", EASY), ("hard", HARD))):
            folder = make_split_dir(temp_dir, "test", subset)
            for number in range(counts[subset]):
                rng = np.random.default_rng([seed, subset_index, number])
                write_scene(
                    folder, f"{number:04d}", rng, difficulty, size=image_size(index, width, height), quality=90
                )
                index += 1
    return data_dir, subsets


def list_test_images(data_dir: Path) -> list[tuple[str, Path]]:
    """(subset, image path) of every test pair, easy then hard, as dataset.trans10k pairs them."""
    from dataset.trans10k import scan_split

    return [(sample.subset, sample.image_path) for sample in scan_split(data_dir, "test").samples]


# ---------------------------------------------------------------------------------------------------------------------
# Running the entry points


@dataclass
class StepResult:
    name: str
    command: list[str]
    images: int
    returncode: int = -1
    wall_s: float = 0.0
    progress: dict[int, float] = field(default_factory=dict)  # images done -> seconds since start (line arrival)
    peak_rss_gib: float = 0.0  # wait4: the largest RSS of any one process of the child's tree
    peak_anon_gib: float = 0.0  # sampled: RssAnon summed over the child's process tree
    peak_gpu_gib: float | None = None  # sampled with nvidia-smi (cuda only)
    log_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def startup_s(self) -> float | None:
        return self.progress.get(0)

    @property
    def loop_s(self) -> float | None:
        if 0 in self.progress and self.images in self.progress:
            return self.progress[self.images] - self.progress[0]
        return None

    @property
    def per_image_all_s(self) -> float | None:
        return None if self.loop_s is None else self.loop_s / self.images

    @property
    def per_image_steady_s(self) -> float | None:
        if self.images >= 2 and 1 in self.progress and self.images in self.progress:
            return (self.progress[self.images] - self.progress[1]) / (self.images - 1)
        return None

    @property
    def after_loop_s(self) -> float | None:
        return None if self.images not in self.progress else self.wall_s - self.progress[self.images]


class TreeSampler(threading.Thread):
    """Samples RssAnon (summed over a process and its descendants) and, on CUDA, their GPU memory, twice a second."""

    def __init__(self, pid: int, gpu: bool) -> None:
        super().__init__(daemon=True)
        self.pid, self.gpu = pid, gpu and shutil.which("nvidia-smi") is not None
        self.peak_anon = 0
        self.peak_gpu_mib: float | None = 0.0 if self.gpu else None
        self.stopped = threading.Event()

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self.pid)
            return [self.pid] + [child.pid for child in root.children(recursive=True)]
        except psutil.Error:
            return []

    @staticmethod
    def rss_anon(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def gpu_mib(self, pids: list[int]) -> float:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        try:
            output = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return 0.0
        used = 0.0
        for line in output.splitlines():
            parts = [part.strip() for part in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids:
                used += float(parts[1])
        return used

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            pids = self.pids()
            self.peak_anon = max(self.peak_anon, sum(self.rss_anon(pid) for pid in pids))
            if self.gpu:
                self.peak_gpu_mib = max(self.peak_gpu_mib or 0.0, self.gpu_mib(pids))


def run_step(
    name: str, command: list[str], env: dict, log_path: Path, images: int, progress_desc: str | None
) -> StepResult:
    """Run one entry point; stream its output (to the console and log_path) and time its tqdm progress lines."""
    result = StepResult(name, command, images, log_path=log_path)
    pattern = re.compile(rf"{re.escape(progress_desc)}:\s*\d+%.*?\|\s*(\d+)/(\d+) \[") if progress_desc else None
    shown = [part if "\n" not in part else "<snippet>" for part in command]
    print(f"\n$ {' '.join(shown)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = TreeSampler(process.pid, gpu=env.get("CUDA_VISIBLE_DEVICES") != "")
    sampler.start()
    pending, pending_at = b"", 0.0  # the unterminated tail and when its first byte arrived
    with open(log_path, "w") as log:
        while chunk := os.read(process.stdout.fileno(), 65536):
            now = time.perf_counter() - started
            pending_at = pending_at if pending else now
            *lines, tail = re.split(rb"[\r\n]", pending + chunk)
            # A line is timed by the arrival of its first byte. tqdm writes "\r<status>" with no line end, so a status
            # is complete on arrival and the tail is matched too: not only once the next write ends it.
            # A chunk without a line end completes no line (lines is empty).
            timed = list(zip(lines, ([pending_at] + [now] * (len(lines) - 1))[: len(lines)], strict=True))
            pending, pending_at = tail, (now if lines else pending_at)
            for raw, at in [*timed, (pending, pending_at)]:
                match = pattern.search(raw.decode("utf-8", errors="replace")) if pattern else None
                if match:
                    result.progress.setdefault(int(match.group(1)), at)
            for raw, at in timed:
                line = raw.decode("utf-8", errors="replace").rstrip()
                if line:
                    log.write(f"[{at:8.2f}] {line}\n")
                    print(f"  | {line}", flush=True)
        if pending.strip():
            log.write(pending.decode("utf-8", errors="replace") + "\n")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = result.returncode = os.waitstatus_to_exitcode(status)
    result.wall_s = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()
    result.peak_rss_gib = usage.ru_maxrss * 1024 / GIB  # KiB on Linux
    result.peak_anon_gib = sampler.peak_anon / GIB
    if sampler.peak_gpu_mib is not None:
        result.peak_gpu_gib = sampler.peak_gpu_mib / 1024 or None  # 0: nvidia-smi showed none of its pids
    print(
        f"  -> exit {result.returncode} after {result.wall_s:.1f} s, peak RSS {result.peak_rss_gib:.2f} GiB",
        flush=True,
    )
    return result


LOAD_SNIPPET = """\
import json, sys, time
from pathlib import Path
from models.loading import load_base_transformer
from utils.measure import count_parameters
started = time.perf_counter()
model = load_base_transformer(sys.argv[1], None, None)
seconds = time.perf_counter() - started
status = {k: int(v.split()[0]) * 1024 for k, v in
          (line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()) if k.startswith("Rss")}
parameters = count_parameters(model)
state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print("SMOKE_LOAD " + json.dumps({"seconds": seconds, "parameters": parameters, "state_bytes": state,
      "dtype": str(next(model.parameters()).dtype), **status}), flush=True)
"""


# ---------------------------------------------------------------------------------------------------------------------
# LoRA training (--train_lora)


def ensure_train_data(workdir: Path, num_images: int, width: int, height: int, seed: int) -> Path:
    """A flat Trans10k train split of synthetic scenes (the helpers ensure_data uses), in its own folder."""
    from dataset.synthetic import EASY, HARD, make_split_dir, write_scene
    from demo.assets import building, is_complete

    data_dir = workdir / "trans10k_train"
    params = {"train": num_images, "size": [width, height], "seed": seed, "scene_rng": "seed, 2, number"}
    if is_complete(data_dir, params):
        return data_dir
    with building(data_dir, params) as temp_dir:
        folder = make_split_dir(temp_dir, "train", None)
        for number in range(num_images):
            rng = np.random.default_rng([seed, 2, number])
            difficulty = EASY if number % 2 == 0 else HARD
            write_scene(folder, f"{number:04d}", rng, difficulty, size=image_size(number, width, height), quality=90)
    return data_dir


LORA_CHECK_SNIPPET = """\
import json, sys
from pathlib import Path
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from models.loading import load_base_transformer
from models.lora import LORA_DIR, LORA_WEIGHTS, load_lora_transformer
model_dir, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
adapter = load_file(str(run_dir / LORA_DIR / LORA_WEIGHTS))
non_lora = [k for k in adapter if "lora_A" not in k and "lora_B" not in k]
b_keys = [k for k in adapter if "lora_B" in k]
b_zero = [k for k in b_keys if not bool(adapter[k].abs().max() > 0)]
b_max = max(float(adapter[k].abs().max()) for k in b_keys)
finite = all(bool(torch.isfinite(t).all()) for t in adapter.values())
model = load_lora_transformer(load_base_transformer(str(model_dir), None, None), run_dir / LORA_DIR, merge=False)
names = ["transformer_blocks.0.attn.to_q", "transformer_blocks.12.ff.net.2", "transformer_blocks.23.attn.add_k_proj"]
modules = dict(model.named_modules())
equal = {}
with safe_open(str(model_dir / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as base:
    for name in names:
        layer = modules[name].base_layer
        for kind in ("weight", "bias"):
            stored = base.get_tensor(f"{name}.{kind}").to(torch.float32)
            equal[f"{name}.{kind}"] = bool(torch.equal(getattr(layer, kind).detach(), stored))
trainable = sum(t.numel() for t in adapter.values())
print("SMOKE_LORA " + json.dumps({"adapter_tensors": len(adapter), "adapter_values": trainable,
      "non_lora_keys": non_lora[:3], "lora_B": len(b_keys), "lora_B_zero": b_zero, "lora_B_max_abs": b_max,
      "finite": finite, "base_layer_equal": equal}), flush=True)
"""


def lora_training_smoke(
    args: argparse.Namespace, workdir: Path, model_dir: Path, out: Path, photos: list[Path], env: dict
) -> list[StepResult]:
    """trainer.py --train_mode lora for args.train_steps steps on the full-size folder, then: finite losses, the run
    wrote the adapter only, lora_B moved off zero, the base layers of base + adapter (unmerged) equal the base file,
    and predict.py runs the saved run on one image."""
    width, height = (int(part) for part in args.image_size.lower().split("x"))
    train_dir = ensure_train_data(workdir, args.train_images, width, height, args.seed)
    run_dir, logs, python = out / "train_lora", out / "logs", sys.executable
    launcher = Path(python).parent / "accelerate"
    accelerate = [str(launcher)] if launcher.exists() else [python, "-m", "accelerate.commands.launch"]
    config = REPO_ROOT / "configs" / "accelerate" / ("cpu_1proc.yaml" if args.device == "cpu" else "single_gpu.yaml")
    base_file = model_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    base_stat = base_file.stat()
    train_command = [
        *accelerate, "launch", "--config_file", str(config), str(REPO_ROOT / "trainer.py"),
        "--pretrained_model_name_or_path", str(model_dir), "--dataset_path", str(train_dir),
        "--output_dir", str(run_dir), "--cache_dir", str(out / "cache"),
        "--train_mode", "lora", "--lora_rank", str(args.lora_rank), "--lora_alpha", str(args.lora_rank),
        "--resolution", str(args.train_resolution), "--train_batch_size", "1", "--gradient_accumulation_steps", "1",
        "--max_train_steps", str(args.train_steps), "--mixed_precision", args.mixed_precision,
        "--validation_steps", "0", "--dataloader_num_workers", "0", "--report_to", "none",
        "--checkpointing_steps", str(args.train_steps),
    ]  # fmt: skip
    steps = [run_step("trainer.py --train_mode lora", train_command, env, logs / "train_lora.log", args.train_steps,
                      "steps")]  # fmt: skip
    train = steps[0]
    text = train.log_path.read_text() if train.log_path.exists() else ""
    losses = [float(v) for v in re.findall(r"loss=([-+0-9.einfa]+)", text)]
    train.notes += [] if losses and all(math.isfinite(v) for v in losses) else [f"losses not all finite: {losses}"]
    print(f"  losses shown by tqdm: {sorted(set(losses))}", flush=True)
    summary = run_dir / "train_summary.json"
    if not summary.exists() or json.loads(summary.read_text()).get("steps") != args.train_steps:
        train.notes.append(f"{summary}: missing or not {args.train_steps} steps")
    if (run_dir / "transformer").exists():
        train.notes.append(f"{run_dir / 'transformer'} exists: a LoRA run should write transformer_lora/ only")
    if not (run_dir / "transformer_lora" / "pytorch_lora_weights.safetensors").exists():
        train.notes.append("no transformer_lora/pytorch_lora_weights.safetensors")
    after = base_file.stat()
    if (after.st_size, after.st_mtime_ns) != (base_stat.st_size, base_stat.st_mtime_ns):
        train.notes.append(f"{base_file} changed during training")
    if train.returncode != 0 or train.notes:
        return steps

    check = run_step(
        "check: adapter + base layers", [python, "-c", LORA_CHECK_SNIPPET, str(model_dir), str(run_dir)], env,
        logs / "lora_check.log", 0, None,
    )  # fmt: skip
    steps.append(check)
    found = re.search(r"SMOKE_LORA (\{.*\})", check.log_path.read_text())
    if found is None:
        check.notes.append("no SMOKE_LORA line")
    else:
        result = json.loads(found.group(1))
        check.notes += [] if not result["non_lora_keys"] else [f"non-adapter keys saved: {result['non_lora_keys']}"]
        # The last block is context_pre_only: its text-token outputs are dropped, so the text queries' adapter
        # (add_q_proj) gets no gradient and its lora_B stays zero. Every other lora_B must move.
        last = SD35_MEDIUM_TRANSFORMER_CONFIG["num_layers"] - 1
        unmoved = set(result["lora_B_zero"]) - {f"transformer.transformer_blocks.{last}.attn.add_q_proj.lora_B.weight"}
        check.notes += [f"lora_B still zero: {sorted(unmoved)[:3]}"] if unmoved else []
        check.notes += [] if result["finite"] else ["non-finite adapter values"]
        check.notes += [f"base layer differs: {k}" for k, v in result["base_layer_equal"].items() if not v]
        check.extra = result

    photo_dir = out / "photos_one"
    photo_dir.mkdir(exist_ok=True)
    for photo in photos:
        shutil.copyfile(photo, photo_dir / photo.name)
    predict_command = [
        python, str(REPO_ROOT / "predict.py"), "--pretrained_model_name_or_path", str(model_dir),
        "--transformer_path", str(run_dir), "--resolution", str(args.train_resolution),
        "--mixed_precision", args.mixed_precision, "--eval_batch_size", "1", "--dataloader_num_workers", "0",
        "--cache_dir", str(out / "cache"), "--input", str(photo_dir), "--output", str(out / "predict_lora"),
    ]  # fmt: skip
    steps.append(run_step("predict.py (LoRA run)", predict_command, env, logs / "predict_lora.log", len(photos),
                          "predict"))  # fmt: skip
    steps[-1].notes += check_outputs_predict(out / "predict_lora", [photo_dir / p.name for p in photos])
    for step in steps:
        if step.returncode != 0:
            step.notes.append(f"exit code {step.returncode}; see {step.log_path}")
    return steps


def print_lora_report(args, steps, started_at, load_before, load_after) -> None:
    from bench.common import machine_description

    print(f"\n# Full-size LoRA training smoke ({started_at}; {machine_description(torch.device('cpu'))})\n")
    print(
        f"trainer.py --train_mode lora, rank {args.lora_rank}, {args.train_steps} steps, batch 1, "
        f"{args.train_resolution} px, mixed_precision {args.mixed_precision}; load average {load_before[0]:.2f} "
        f"at the start, {load_after[0]:.2f} at the end\n"
    )
    rows = []
    for step in steps:
        per = step.per_image_all_s
        steady = step.per_image_steady_s
        rows.append(
            (
                step.name, fmt(step.wall_s, ".1f"), fmt(step.startup_s, ".1f"), fmt(per, ".1f"), fmt(steady, ".1f"),
                f"{step.peak_rss_gib:.2f}", f"{step.peak_anon_gib:.2f}", "; ".join(step.notes) or "ok",
            )
        )  # fmt: skip
    headers = ("step", "wall (s)", "start-up (s)", "s/step or image, all", "s/step, 2..N", "peak RSS (GiB)",
               "peak RssAnon, tree (GiB)", "checks")  # fmt: skip
    print(markdown_table(headers, rows))
    if len(steps) > 1 and getattr(steps[1], "extra", None):
        print(f"\nadapter check: {json.dumps(steps[1].extra)}")


def check_outputs_val(eval_dir: Path, data_dir: Path, cache_dir: Path) -> list[str]:
    """What a real run must have written: metrics, native-size raw PNGs, the 333-token empty-prompt conditioning."""
    from safetensors.torch import load_file

    problems = []
    if not (eval_dir / "metrics.json").is_file():
        problems.append(f"no {eval_dir / 'metrics.json'}")
    for subset, image_path in list_test_images(data_dir):
        raw = eval_dir / "raw" / subset / f"{image_path.stem}.png"
        if not raw.is_file():
            problems.append(f"missing {raw}")
        elif Image.open(raw).size != Image.open(image_path).size:
            problems.append(f"{raw}: size {Image.open(raw).size} != image {Image.open(image_path).size}")
    caches = sorted((cache_dir / "prompt_embeds").glob("*.safetensors"))
    if len(caches) != 1:
        problems.append(f"expected one conditioning cache file in {cache_dir}, found {len(caches)}")
    else:
        tensors = load_file(str(caches[0]))
        shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
        expected = {"prompt_embeds": (1, CLIP_MAX_LENGTH + 256, 4096), "pooled_prompt_embeds": (1, 768 + 1280)}
        if shapes != expected:
            problems.append(f"conditioning shapes {shapes}, expected {expected}")
    return problems


def check_outputs_predict(output_dir: Path, photos: list[Path]) -> list[str]:
    problems = []
    for photo in photos:
        for suffix in ("_mask", "_raw", "_overlay"):
            path = output_dir / f"{photo.stem}{suffix}.png"
            if not path.is_file():
                problems.append(f"missing {path}")
            elif Image.open(path).size != Image.open(photo).size:
                problems.append(f"{path}: size {Image.open(path).size} != input {Image.open(photo).size}")
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Host-RAM count of the reference training setup


def meta_numels(model: torch.nn.Module) -> tuple[list[int], int]:
    """(numel of every parameter, numel of the persistent buffers), counted on the meta device."""
    parameters = [p.numel() for p in model.parameters()]
    state = sum(t.numel() for t in model.state_dict().values())
    return parameters, state - sum(parameters)


def text_encoder_parameters() -> dict[str, int]:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        models = {
            "CLIP-L": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L_CONFIG)),
            "CLIP-G": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_CONFIG)),
            "T5-XXL": T5EncoderModel(T5Config(**T5_XXL_CONFIG)),
        }
    return {name: count_parameters(model) for name, model in models.items()}


def power_of_two_ceil(value: int) -> int:
    return 1 << (value - 1).bit_length()


def host_ram_count() -> tuple[str, dict]:
    """Host RAM of accelerate_config.yaml + ds_config.json (ZeRO-3, optimizer offloaded to CPU), by phase: a count."""
    accelerate_config = yaml.safe_load((REPO_ROOT / "accelerate_config.yaml").read_text())
    ds_config = json.loads((REPO_ROOT / "ds_config.json").read_text())
    zero = ds_config["zero_optimization"]
    ranks = accelerate_config["num_processes"] // accelerate_config.get("num_machines", 1)
    mixed_precision = parse_config([])[0].mixed_precision
    compute_bytes = {"bf16": 2, "fp16": 2}.get(mixed_precision, 4)
    grad_accum = ds_config.get("data_types", {}).get("grad_accum_dtype")
    grad_accum_bytes = {"fp32": 4, "bf16": 2, "fp16": 2}.get(grad_accum, compute_bytes)  # unset: the model dtype
    pinned = bool(zero.get("offload_optimizer", {}).get("pin_memory"))
    assumptions = {
        "ranks per machine": ranks,
        "zero stage": zero.get("stage"),
        "offload_optimizer": zero.get("offload_optimizer", {}).get("device"),
        "offload_param": zero.get("offload_param", {}).get("device"),
        "zero3_init_flag": accelerate_config.get("deepspeed_config", {}).get("zero3_init_flag"),
        "mixed_precision": mixed_precision,
        "grad_accum_dtype": grad_accum or f"unset (= model dtype, {grad_accum_bytes} B)",
        "pin_memory": pinned,
    }
    expected = {"zero stage": 3, "offload_optimizer": "cpu", "offload_param": "none", "zero3_init_flag": False}
    mismatched = {k: assumptions[k] for k, v in expected.items() if assumptions[k] != v}

    parameters, buffers = meta_numels(build_transformer(SD35_MEDIUM_TRANSFORMER_CONFIG, "meta"))
    n = sum(parameters)
    partition = sum(math.ceil(numel / ranks) for numel in parameters)  # ZeRO-3 pads every parameter to ranks parts
    vae = count_parameters(build_vae(SD35_MEDIUM_VAE_CONFIG, "meta"))
    encoders = text_encoder_parameters()

    master, grad32, grad_flat, adam = 4 * partition, 4 * partition, grad_accum_bytes * partition, 8 * partition
    rounding = (power_of_two_ceil(grad32) - grad32 + power_of_two_ceil(grad_flat) - grad_flat) if pinned else 0
    steady = master + grad32 + grad_flat + adam + rounding
    load = 4 * (n + buffers)
    rows_spec = [
        (
            "1 conditioning: CLIP-L + CLIP-G + T5-XXL in bf16, loaded via the host (local main process only)",
            2 * sum(encoders.values()),
            1,
        ),
        ("2 load: VAE in bf16 until `.to(device)`", compute_bytes * vae, ranks),
        ("2 load: transformer fp32 params + fp32 pos_embed buffer (`load_base_transformer`)", load, ranks),
        ("3 ZeRO-3 offload: fp32 master-weight partition (`fp32_partitioned_groups_flat`)", master, ranks),
        ("3 ZeRO-3 offload: fp32 gradient partition (its `.grad`, pinned)", grad32, ranks),
        (
            f"3 ZeRO-3 offload: {grad_accum_bytes * 8}-bit gradient partition buffer (`grad_partitions_flat_buffer`, "
            "pinned)",
            grad_flat,
            ranks,
        ),
        ("3 ZeRO-3 offload: DeepSpeedCPUAdam exp_avg + exp_avg_sq (fp32, from the first step)", adam, ranks),
        (
            "3 ZeRO-3 offload: pinned blocks rounded up to a power of two (torch's CachingHostAllocator)",
            rounding,
            ranks,
        ),
        ("**3 ZeRO-3 offload, steady state (sum of the phase-3 rows)**", steady, ranks),
        ("4 checkpoint save: gathered 16-bit state dict on rank 0, on top of 3", 2 * n + 4 * buffers, 1),
    ]
    rows = [
        (phase, f"{per_rank:,}", f"{per_rank / GIB:.2f}", count, f"{per_rank * count / GIB:.1f}")
        for phase, per_rank, count in rows_spec
    ]
    table = markdown_table(["phase", "bytes per rank", "GiB per rank", "ranks", "total GiB"], rows)
    numbers = {
        "transformer_parameters": n,
        "transformer_buffers": buffers,
        "partition_per_rank": partition,
        "vae_parameters": vae,
        "text_encoders": encoders,
        "phase_totals_gib": {
            "conditioning": 2 * sum(encoders.values()) / GIB,
            "load": ranks * (load + compute_bytes * vae) / GIB,
            "offload_steady": ranks * steady / GIB,
            "offload_steady_without_rounding": ranks * (steady - rounding) / GIB,
            "offload_steady_plus_save": (ranks * steady + 2 * n + 4 * buffers) / GIB,
        },
        "assumptions": assumptions,
        "mismatched": mismatched,
    }
    return table, numbers


def print_count(table: str, numbers: dict) -> None:
    totals = numbers["phase_totals_gib"]
    print("\n## Host RAM of the reference training setup (COUNTED from the meta-device models, not measured)\n")
    print(f"assumptions read from accelerate_config.yaml, ds_config.json, config.yaml: {numbers['assumptions']}")
    if numbers["mismatched"]:
        print(
            f"WARNING: the count below assumes ZeRO-3 + CPU optimizer offload; these differ: {numbers['mismatched']}"
        )
    encoders = ", ".join(f"{name} {count:,}" for name, count in numbers["text_encoders"].items())
    print(
        f"transformer {numbers['transformer_parameters']:,} parameters + {numbers['transformer_buffers']:,} "
        f"buffer elements; ZeRO-3 partition {numbers['partition_per_rank']:,} per rank; VAE "
        f"{numbers['vae_parameters']:,}; text encoders {encoders}\n"
    )
    print(table)
    print(
        f"\nphases in order, not at once: conditioning {totals['conditioning']:.1f} GiB (one process), load "
        f"{totals['load']:.1f} GiB (all ranks hold the fp32 transformer), ZeRO-3 offload steady state "
        f"{totals['offload_steady']:.1f} GiB ({totals['offload_steady_without_rounding']:.1f} GiB without the "
        f"power-of-two rounding of pinned blocks), {totals['offload_steady_plus_save']:.1f} GiB while rank 0 "
        "gathers a checkpoint. Not counted: CUDA context, libraries and Python heap per process, DataLoader "
        "workers, page cache of the safetensors files, one-time init transients, and the bf16 host copy (P x 2 B "
        "per rank) that torch makes when each step copies the fp32 master partition into the bf16 GPU weights."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Main


def check_disk(folder: Path, need: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(f"{folder}: {free / GIB:.1f} GiB free, the smoke needs ~{need / GIB:.1f} GiB; use --workdir")


def memory_available() -> int:
    return psutil.virtual_memory().available


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: 1024 px and bf16 by default")
    parser.add_argument("--resolution", type=int, default=None, help="model side in px (default: 256 cpu, 1024 cuda)")
    parser.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"), default=None, help="default: no / bf16")
    parser.add_argument("--images", type=int, default=3, help="test images (easy gets the odd one); predict.py too")
    parser.add_argument("--image_size", default="640x480", help="native WxH of the images (portrait every other)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cached model folder, data and outputs")
    parser.add_argument("--weights_dtype", choices=tuple(WEIGHT_DTYPES), default="bf16", help="dtype of the files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_load_step", action="store_true", help="skip the trainer's fp32 transformer load step")
    parser.add_argument("--count_only", action="store_true", help="only print the host-RAM count")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model folder")
    parser.add_argument("--clean", action="store_true", help="delete the cached model folder at the end")
    parser.add_argument(
        "--train_lora",
        action="store_true",
        help="instead of the inference steps: trainer.py --train_mode lora for a few steps, checks, predict.py",
    )
    parser.add_argument("--train_steps", type=int, default=3, help="--train_lora: optimizer steps (batch 1)")
    parser.add_argument("--train_resolution", type=int, default=128, help="--train_lora: training side in px")
    parser.add_argument("--train_images", type=int, default=4, help="--train_lora: synthetic train pairs")
    parser.add_argument("--lora_rank", type=int, default=32, help="--train_lora: adapter rank (alpha = rank)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU on this machine")
    args.resolution = args.resolution or (1024 if args.device == "cuda" else 256)
    args.mixed_precision = args.mixed_precision or ("bf16" if args.device == "cuda" else "no")
    if args.images < 1:
        parser.error("--images must be at least 1")
    return args


def child_env(device: str) -> dict:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false"
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # val_inference.py and predict.py take the GPU whenever one is visible
        # One thread count for both entry points (accelerate launch would otherwise pick its own), and no OpenMP
        # spin-waiting on a shared CPU (docs/benchmarks.md: 40x slower steps when another job holds a core).
        env.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    table, numbers = host_ram_count()
    if args.count_only:
        print_count(table, numbers)
        return

    width, height = (int(part) for part in args.image_size.lower().split("x"))
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()
    print(
        f"workdir {workdir}: {shutil.disk_usage(workdir).free / GIB:.1f} GiB free disk; "
        f"{memory_available() / GIB:.1f} GiB memory available; load average {load_before[0]:.2f}",
        flush=True,
    )
    model_dir, build_s = ensure_model_folder(workdir, args.weights_dtype, args.seed, args.rebuild)
    data_dir, subsets = ensure_data(workdir, args.images, width, height, args.seed)
    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)  # fresh outputs and conditioning cache: every run encodes the prompt
    photos_dir, logs = out / "photos", out / "logs"
    photos_dir.mkdir(parents=True)
    logs.mkdir()
    photos = []
    for subset, path in list_test_images(data_dir):
        photos.append(photos_dir / f"{subset}_{path.name}")
        shutil.copyfile(path, photos[-1])

    # The transformer is loaded in fp32 on the CPU (bf16 on a GPU); refuse to start a child that cannot fit.
    load_bytes = 2.47e9 * (4 if args.device == "cpu" else 2)
    if memory_available() < 1.2 * load_bytes:
        raise SystemExit(
            f"only {memory_available() / GIB:.1f} GiB memory available; loading the transformer needs "
            f"~{1.2 * load_bytes / GIB:.1f} GiB. Free memory or run on a bigger machine."
        )

    env = child_env(args.device)
    if args.train_lora:
        steps = lora_training_smoke(args, workdir, model_dir, out, photos[:1], env)
        print_lora_report(args, steps, started_at, load_before, os.getloadavg())
        if any(step.notes for step in steps):
            raise SystemExit(1)
        return
    python = sys.executable
    launcher = Path(python).parent / "accelerate"  # the venv's `accelerate` command, as a user types it
    accelerate = [str(launcher)] if launcher.exists() else [python, "-m", "accelerate.commands.launch"]
    accelerate_config = "cpu_1proc.yaml" if args.device == "cpu" else "single_gpu.yaml"
    common = [
        "--pretrained_model_name_or_path", str(model_dir),
        "--transformer_path", str(model_dir / "transformer"),
        "--resolution", str(args.resolution),
        "--mixed_precision", args.mixed_precision,
        "--eval_batch_size", "1",
        "--dataloader_num_workers", "0",
        "--cache_dir", str(out / "cache"),
    ]  # fmt: skip
    # Explicit: the default puts a model's results beside the model, i.e. into the cached model folder.
    eval_dir = out / "val_inference" / f"eval-test-{args.resolution}px-thr0.5-native"
    steps: list[StepResult] = []
    if not args.skip_load_step:
        command = [python, "-c", LOAD_SNIPPET, str(model_dir)]
        steps.append(run_step("trainer load step", command, env, logs / "load.log", 0, None))
    val_command = [
        *accelerate, "launch", "--config_file", str(REPO_ROOT / "configs" / "accelerate" / accelerate_config),
        str(REPO_ROOT / "val_inference.py"), *common,
        "--dataset_path", str(data_dir), "--split", "test", "--subsets", ",".join(subsets),
        "--output_dir", str(out / "val_inference"), "--eval_output_dir", str(eval_dir),
    ]  # fmt: skip
    steps.append(run_step("val_inference.py", val_command, env, logs / "val_inference.log", args.images, "test"))
    predict_command = [
        python, str(REPO_ROOT / "predict.py"), *common, "--input", str(photos_dir), "--output", str(out / "predict"),
    ]  # fmt: skip
    steps.append(run_step("predict.py", predict_command, env, logs / "predict.log", args.images, "predict"))

    steps[-2].notes += check_outputs_val(eval_dir, data_dir, out / "cache")
    steps[-1].notes += check_outputs_predict(out / "predict", photos)
    for step in steps:
        if step.returncode != 0:
            step.notes.append(f"exit code {step.returncode}; see {step.log_path}")
        text = step.log_path.read_text() if step.log_path and step.log_path.exists() else ""
        if "invalid value encountered" in text:
            step.notes.append("NaN/inf warnings in the output")
    load_after = os.getloadavg()
    print_report(args, model_dir, data_dir, build_s, steps, started_at, load_before, load_after)
    print_count(table, numbers)
    if args.clean:
        shutil.rmtree(model_dir)
        print(f"\nremoved {model_dir}")
    print(f"\nworkdir {workdir}: {folder_size(workdir) / GIB:.2f} GiB on disk (model folder cached for the next run)")
    if any(step.notes for step in steps):
        raise SystemExit(1)


def print_report(args, model_dir, data_dir, build_s, steps, started_at, load_before, load_after) -> None:
    from bench.common import machine_description

    sizes = sorted({Image.open(path).size for _, path in list_test_images(data_dir)})
    threads = child_env(args.device).get("OMP_NUM_THREADS", "default")
    print(f"\n## Full-size architecture smoke ({started_at})\n")
    print(f"machine: {machine_description(torch.device('cpu'))}; {psutil.virtual_memory().total / GIB:.0f} GiB RAM")
    print(
        f"device {args.device}, {args.resolution} px, mixed_precision {args.mixed_precision}, batch 1, "
        f"{args.images} images of {' / '.join(f'{w}x{h}' for w, h in sizes)}, weights on disk {args.weights_dtype} "
        f"({folder_size(model_dir) / GIB:.2f} GiB), OMP_NUM_THREADS {threads}; load average "
        f"{load_before[0]:.2f} at start, {load_after[0]:.2f} at end"
    )
    if build_s is not None:
        print(f"model folder built in {build_s:.0f} s (cached for later runs)")
    rows = []
    for step in steps:
        rows.append(
            (
                step.name,
                step.images or "-",
                fmt(step.wall_s, ".1f"),
                fmt(step.startup_s, ".1f") if step.images else "-",
                fmt(step.per_image_all_s, ".1f") if step.images else "-",
                fmt(step.per_image_steady_s, ".1f") if step.images else "-",
                fmt(step.after_loop_s, ".1f") if step.images else "-",
                fmt(step.peak_rss_gib, ".2f"),
                fmt(step.peak_anon_gib, ".2f"),
                *([fmt(step.peak_gpu_gib, ".2f")] if args.device == "cuda" else []),
                "ok" if not step.notes else "; ".join(step.notes),
            )
        )
    headers = [
        "step",
        "images",
        "wall (s)",
        "start-up (s)",
        "s/image, all",
        "s/image, 2..N",
        "after loop (s)",
        "peak RSS (GiB)",
        "peak RssAnon, tree (GiB)",
        *(["peak GPU (GiB)"] if args.device == "cuda" else []),
        "checks",
    ]
    print()
    print(markdown_table(headers, rows))
    for step in steps:
        for line in step.log_path.read_text().splitlines() if step.log_path else []:
            if "SMOKE_LOAD " in line:
                info = json.loads(line.split("SMOKE_LOAD ", 1)[1])
                print(
                    f"\ntrainer load step: {info['parameters']:,} parameters in {info['dtype']}, state dict "
                    f"{info['state_bytes'] / GIB:.2f} GiB, from_pretrained {info['seconds']:.1f} s; after loading: "
                    f"RssAnon {info.get('RssAnon', 0) / GIB:.2f} GiB, RssFile {info.get('RssFile', 0) / GIB:.2f} GiB"
                )
    print(
        "\nstart-up: launch to the first progress line (imports, loading; val_inference also encodes the empty prompt "
        "with the text encoders, predict.py reads the cached conditioning). s/image: from the arrival times of tqdm's "
        "lines, all N images (includes the first one) and images 2..N. after loop: metrics, panels, exit. peak RSS: "
        "largest resident set of any one process of the step (wait4); RssAnon: summed over the step's processes, "
        "sampled at 2 Hz."
    )


if __name__ == "__main__":
    main()
