"""Fine-tune the SD3.5 transformer to map image latents to transparency-mask latents in one deterministic step.

    accelerate launch --config_file accelerate_config.yaml trainer.py [--config FILE] [--key value ...]

Method: "Fine-Tuning Image-Conditional Diffusion Models is Easier than You Think" (arXiv 2409.11355): a frozen VAE,
a fixed timestep, constant empty-prompt conditioning and an MSE loss between predicted and true mask latents, or
(`loss`) a pixel-space BCE + Dice of the prediction decoded by the frozen VAE, or both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, parse_flag_from_env, set_seed
from diffusers import SD3Transformer2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup, get_scheduler
from tqdm.auto import tqdm

from dataset.latent_cache import CachedLatentsTrain, build_latent_cache, latent_cache_dir
from dataset.trans10k import TrainSampler, Trans10kEval, Trans10kTrain, eval_collate, validate_split
from dataset.transforms import crop_to_content, target_channels, tensor_to_image
from evaluation.image_writer import render_panel
from evaluation.metrics import summarize
from evaluation.scoring import score_batch
from models.conditioning import load_empty_prompt_embeds
from models.loading import load_base_transformer, load_frozen_vae, precision_dtype
from models.lora import LORA_DIR, add_lora, lora_state_dict, merged_state_dict, restore_lora, write_lora
from models.losses import TrainingLoss
from models.saving import write_transformer
from models.segmenter import MaskPredictor, check_resolution, decode_raw_mask, encode_latents
from utils.atomic import atomic_write_json
from utils.cache import cache_root
from utils.checkpointing import (
    BEST,
    best_record,
    recover_interrupted_save,
    resolve_resume_path,
    save_best_checkpoint,
    save_checkpoint,
)
from utils.config import load_config
from utils.distributed import check_deepspeed_config, check_launch_matches_request
from utils.measure import peak_memory_gib
from utils.model_card import write_model_card
from utils.run_snapshot import write_run_snapshot

logger = get_logger(__name__)
VALIDATION_PANELS = 8  # panels logged per validation (the first images of the main process's shard)


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    report_to = {"none": None, "all": "all"}.get(args.report_to, args.report_to)
    project = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / args.logging_dir)
    )
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=project,
        dynamo_backend="inductor" if args.torch_compile else "no",
        # The loop steps the scheduler once per optimizer step itself: the schedule then counts optimizer steps as
        # config.yaml does, whatever the number of processes (by default Accelerate steps it once per process).
        step_scheduler_with_optimizer=False,
        # No CUDA: cpu=True lets `--multi_gpu --num_processes 2` run gloo ranks; DeepSpeed has its own CPU backend.
        cpu=not torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"),
    )


def weight_dtype_for(accelerator: Accelerator) -> torch.dtype:
    """Frozen weights (the VAE) live in the compute precision; the trained transformer keeps fp32 master weights."""
    return precision_dtype(accelerator.mixed_precision)


def zero3_init_disabled(accelerator: Accelerator):
    """Frozen models must load whole, not as ZeRO-3 shards (as in diffusers' examples)."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero3_init_context_manager(enable=False) if plugin is not None else contextlib.nullcontext()


def build_train_dataset(args: argparse.Namespace, samples: list, vae, accelerator: Accelerator):
    """Pixels with on-the-fly augmentation, or (cache_latents) stored VAE latents built once and reused."""
    if not args.cache_latents:
        return Trans10kTrain(
            samples,
            args.resolution,
            args.random_flip,
            args.color_jitter,
            args.random_crop_scale,
            args.seed,
            processing=args.processing,
            mask_classes=args.mask_classes,
        )
    cache_dir = latent_cache_dir(
        cache_root(args.cache_dir),
        args.pretrained_model_name_or_path,
        args.revision,
        args.variant,
        vae,
        args.resolution,
        args.random_flip,
        samples,
        args.mask_classes,
    )
    build_latent_cache(
        cache_dir,
        samples,
        args.resolution,
        args.random_flip,
        vae,
        encode_latents,
        accelerator,
        args.eval_batch_size,
        args.mask_classes,
    )
    logger.info(f"training from cached latents in {cache_dir}")
    return CachedLatentsTrain(samples, cache_dir, args.resolution, args.random_flip, args.seed, args.mask_classes)


def build_dataloaders(args: argparse.Namespace, train_dataset, val_samples: list | None):
    loader_kwargs = {
        "num_workers": args.dataloader_num_workers,
        "pin_memory": args.pin_memory and torch.cuda.is_available(),
        "persistent_workers": args.persistent_workers and args.dataloader_num_workers > 0,
    }
    train_sampler = TrainSampler(len(train_dataset), seed=args.seed)
    train_loader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.train_batch_size, sampler=train_sampler, drop_last=True, **loader_kwargs
    )
    val_loader = None
    if val_samples:
        val_dataset = Trans10kEval(
            validation_subset(val_samples, args.num_validation_images),
            args.resolution,
            args.processing,
            args.mask_classes,
        )
        val_loader = torch.utils.data.DataLoader(
            val_dataset, batch_size=args.eval_batch_size, collate_fn=eval_collate, num_workers=0
        )
    return train_loader, val_loader


def validation_subset(val_samples: list, num_images: int) -> list:
    """The images validated during training: all of them for 0, else `num_images` spread over every subset (not the
    first N of "easy")."""
    if num_images == 0 or num_images >= len(val_samples):
        return list(val_samples)
    picked = np.linspace(0, len(val_samples) - 1, num_images).round()
    return [val_samples[int(i)] for i in picked]


def batch_gt_mask(batch: dict, mask_classes: str) -> torch.Tensor:
    """The pixel loss's binary ground truth [B, C, H, W] at the training resolution (target_channels): stored by the
    latent cache, or read from the mask pixels."""
    if "gt_mask" in batch:
        return batch["gt_mask"]
    return target_channels(batch["mask_values"], mask_classes)


def batch_latents(vae, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(image latents, mask latents): read from the latent cache, or encoded now by the frozen VAE."""
    if "image_latents" in batch:
        return batch["image_latents"], batch["mask_latents"]
    return encode_latents(vae, batch["pixel_values"]), encode_latents(vae, batch["mask_values"])


def save_transformer(accelerator: Accelerator, model: torch.nn.Module, directory: Path) -> None:
    """The full transformer as a `from_pretrained` folder; under ZeRO-3 its shards are gathered first.

    Call it on every rank (the gather is a collective); only the main process writes.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        write_transformer(accelerator.unwrap_model(model), state_dict, directory)


def save_adapter(accelerator: Accelerator, model: torch.nn.Module, directory: Path) -> None:
    """The LoRA adapter in diffusers' format, taken from the full (under ZeRO-3: gathered) state dict; all ranks."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        write_lora(unwrapped, lora_state_dict(unwrapped, state_dict), directory)


def save_weights(accelerator: Accelerator, args: argparse.Namespace, model: torch.nn.Module, folder: Path) -> None:
    """What a checkpoint or the final output holds of the model: `transformer/`, or `transformer_lora/` for LoRA."""
    if args.train_mode == "lora":
        save_adapter(accelerator, model, folder / LORA_DIR)
    else:
        save_transformer(accelerator, model, folder / "transformer")


def register_checkpoint_hooks(accelerator: Accelerator, args: argparse.Namespace) -> None:
    """Checkpoints hold the transformer as a `save_pretrained` folder (loadable on its own), or the LoRA adapter,
    plus the training state."""

    def save_hook(models, weights, output_dir):
        for model in models:
            save_weights(accelerator, args, model, Path(output_dir))
            if weights:
                weights.pop()  # already saved: keep Accelerate from writing a second copy

    def load_hook(models, input_dir):
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            return  # the DeepSpeed engine restores its own (possibly sharded) weights
        while models:
            model = accelerator.unwrap_model(models.pop())
            if args.train_mode == "lora":
                restore_lora(model, Path(input_dir) / LORA_DIR)
                continue
            saved = SD3Transformer2DModel.from_pretrained(Path(input_dir) / "transformer", torch_dtype=torch.float32)
            model.load_state_dict(saved.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def build_optimizer(args: argparse.Namespace, transformer: torch.nn.Module, num_processes: int):
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.train_batch_size * args.gradient_accumulation_steps * num_processes
    params = [p for p in transformer.parameters() if p.requires_grad]
    hyper = {
        "lr": learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "weight_decay": args.adam_weight_decay,
        "eps": args.adam_epsilon,
    }
    if args.use_8bit_adam:
        import bitsandbytes  # checked in check_combinations: CUDA and the package are present

        return bitsandbytes.optim.AdamW8bit(params, **hyper)
    return torch.optim.AdamW(params, **hyper, fused=torch.cuda.is_available())  # fused: one CUDA launch for all


@torch.no_grad()
def run_validation(predictor: MaskPredictor, val_loader, accelerator: Accelerator, args, step: int) -> dict:
    """Latent loss and IoU on a few validation images (sharded over ranks), plus image panels in the trackers."""
    losses, scores, panels = [], [], []
    for batch in val_loader:
        with accelerator.autocast():
            image_latents = encode_latents(predictor.vae, batch["pixel_values"].to(accelerator.device))
            mask_latents = encode_latents(predictor.vae, batch["mask_values"].to(accelerator.device))
            predicted = predictor.predict_latents(image_latents)
        per_image_loss = (predicted.float() - mask_latents.float()).pow(2).flatten(1).mean(1)
        raw = decode_raw_mask(predictor.vae, predicted, predictor.mask_classes)
        # keep_aspect: the padding is cut off before scoring, as val_inference.py does (panels show the whole canvas).
        content = crop_to_content(raw, batch["content_size"])
        batch_scores, _, _ = score_batch(content, batch, args.threshold, "square", args.resolution)
        losses.append(accelerator.gather_for_metrics(per_image_loss))
        scores += accelerator.gather_for_metrics(batch_scores, use_gather_object=True)
        if accelerator.is_main_process:
            for i in range(min(len(batch_scores), VALIDATION_PANELS - len(panels))):
                gt = target_channels(batch["mask_values"][i : i + 1], args.mask_classes)[0, 0]  # transparent
                image = tensor_to_image(batch["pixel_values"][i])
                panels.append(np.asarray(render_panel(image, raw[i].cpu(), gt.cpu(), args.threshold)))
    summary = summarize(scores)
    metrics = {"val/loss": torch.cat(losses).mean().item(), "val/iou": summary["dataset"]["iou"]}
    metrics["val/iou_per_image"] = summary["per_image_mean"]["iou"]
    metrics["val/num_images"] = summary["num_images"]
    accelerator.log(metrics, step=step)
    log_panels(accelerator, panels, step)
    return metrics


def log_panels(accelerator: Accelerator, panels: list[np.ndarray], step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"val/panels": np.stack(panels)}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"val/panels": panels}, step=step)


def check_replicas_agree(accelerator: Accelerator, transformer: torch.nn.Module) -> list[float] | None:
    """Data-parallel replicas must hold identical weights; a silent desync would waste the whole run."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return None  # ZeRO shards differ per rank by design
    with torch.no_grad():
        checksum = sum(p.double().sum() for p in accelerator.unwrap_model(transformer).parameters())
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()
    if len(set(checksums)) > 1:
        raise RuntimeError(f"data-parallel replicas diverged: per-rank weight checksums {checksums}")
    return checksums


def build_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, max_train_steps: int):
    """Counted in optimizer steps (the loop steps it once per optimizer step): warm-up over lr_warmup_steps, the end
    of the schedule at max_train_steps, on any number of processes and with any accumulation."""
    if args.lr_scheduler == "cosine":  # diffusers' get_scheduler ignores num_cycles for cosine: pass it here
        return get_cosine_schedule_with_warmup(
            optimizer, args.lr_warmup_steps, max_train_steps, num_cycles=args.lr_num_cycles
        )
    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=max_train_steps,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )


def sharded_batches(train_loader: torch.utils.data.DataLoader, num_processes: int) -> int:
    """Batches each rank sees per epoch once Accelerate shards the loader (drop_last: whole rounds of batches only)."""
    return len(train_loader) // num_processes


def train_steps_plan(args, batches_per_rank: int, num_processes: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total optimizer steps, epochs) for the loader as each rank sees it."""
    steps_per_epoch = math.ceil(batches_per_rank / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError(
            f"train split has fewer images than one global batch ({args.train_batch_size} x {num_processes} "
            "processes); lower train_batch_size"
        )
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    return steps_per_epoch, max_steps, math.ceil(max_steps / steps_per_epoch)


@dataclass
class TrainingRun:
    """Everything the loop needs, built once by `build` (prepared by Accelerate where it applies)."""

    vae: torch.nn.Module
    transformer: torch.nn.Module
    predictor: MaskPredictor
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int
    loss: TrainingLoss


class StopRequest:
    """SIGTERM or SIGUSR1 (what clusters send before a job's time limit) or `max_train_time_minutes`: the loop then
    finishes the optimizer step in flight, writes a checkpoint and exits 0, to be continued with
    `--resume_from_checkpoint latest`."""

    def __init__(self, max_minutes: float | None) -> None:
        self.deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
        self.signal_name: str | None = None
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def reason(self) -> str | None:
        if self.signal_name:
            return self.signal_name
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "max_train_time_minutes"
        return None


def set_up(args: argparse.Namespace) -> Accelerator:
    """Accelerator, logging and seed; stop at once if the launch is not what was asked; tidy a killed save."""
    accelerator = build_accelerator(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_launch_matches_request(accelerator)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        check_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, args, accelerator.num_processes)
    set_seed(args.seed)
    if torch.cuda.is_available() and args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        for action in recover_interrupted_save(args.output_dir):
            logger.info(action)
        write_run_snapshot(args, args.output_dir)
    accelerator.wait_for_everyone()
    return accelerator


def build(args: argparse.Namespace, accelerator: Accelerator) -> TrainingRun:
    """Data checked first, then the frozen pieces, the transformer, loaders, optimizer and schedule, all prepared."""
    # Validate the data layout before loading any model: a broken pair fails in seconds, not hours into an epoch.
    train_samples = validate_split(args.dataset_path, "train")
    val_samples = None
    if args.validation_steps > 0:
        val_samples = validate_split(args.dataset_path, "validation", args.subsets)
    logger.info(f"train: {len(train_samples)} images from {args.dataset_path}")

    # Frozen pieces first, outside any ZeRO-3 partitioning: the VAE and the constant conditioning.
    with accelerator.local_main_process_first(), zero3_init_disabled(accelerator):
        prompt_embeds, pooled_prompt_embeds = load_empty_prompt_embeds(
            args.pretrained_model_name_or_path,
            args.revision,
            args.variant,
            args.cache_dir,
            accelerator.device,
            args.max_sequence_length,
        )
    with zero3_init_disabled(accelerator):
        vae = load_frozen_vae(
            args.pretrained_model_name_or_path, args.revision, args.variant, weight_dtype_for(accelerator)
        )
    vae.to(accelerator.device)
    transformer = load_base_transformer(args.pretrained_model_name_or_path, args.revision, args.variant)
    check_resolution(args.resolution, vae, transformer.config)
    transformer.requires_grad_(True).train()
    if args.train_mode == "lora":  # the frozen base in the compute precision, fp32 adapters
        add_lora(transformer.to(weight_dtype_for(accelerator)), args)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    # The VAE stays unprepared (frozen, never wrapped by DDP or DeepSpeed); the pixel loss decodes in autograd.
    loss = TrainingLoss(args.loss, args.pixel_loss_weight, vae, args.mask_classes)
    if loss.uses_pixels and args.decoder_gradient_checkpointing:
        vae.enable_gradient_checkpointing()

    train_loader, val_loader = build_dataloaders(
        args, build_train_dataset(args, train_samples, vae, accelerator), val_samples
    )
    batches_per_rank = sharded_batches(train_loader, accelerator.num_processes)
    steps_per_epoch, max_train_steps, num_epochs = train_steps_plan(args, batches_per_rank, accelerator.num_processes)
    optimizer = build_optimizer(args, transformer, accelerator.num_processes)
    lr_scheduler = build_lr_scheduler(args, optimizer, max_train_steps)
    register_checkpoint_hooks(accelerator, args)
    # One prepare call for all four, as in diffusers' examples: under DeepSpeed, Accelerate wraps the scheduler and
    # saves it in checkpoints only when it is prepared with the model (prepared alone, it stepped on every micro-batch
    # and every resume restarted the warm-up).
    transformer, optimizer, train_loader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, train_loader, lr_scheduler
    )
    if len(train_loader) != batches_per_rank:
        raise RuntimeError(
            f"the schedule was planned for {batches_per_rank} batches per rank and epoch, but the prepared loader "
            f"has {len(train_loader)}; please report this with your accelerate version"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # Accelerate hands DeepSpeed a new CPU-Adam built on the same param_group dicts, but the scheduler still holds
        # the original optimizer; a resume loads new dicts into DeepSpeed's optimizer and the LR would stop changing
        # (measured: 7.5e-4 for steps 5-8 of an 8-step cosine). Bind it to the prepared optimizer, which always
        # passes through to the param groups DeepSpeed steps with.
        lr_scheduler.scheduler.optimizer = optimizer
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    predictor = MaskPredictor(
        vae,
        transformer,
        prompt_embeds.to(accelerator.device),
        pooled_prompt_embeds.to(accelerator.device),
        args.timestep,
        mask_classes=args.mask_classes,
    )
    if accelerator.is_main_process:
        tracker_config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config)
    return TrainingRun(
        vae,
        transformer,
        predictor,
        optimizer,
        lr_scheduler,
        train_loader,
        val_loader,
        steps_per_epoch,
        max_train_steps,
        num_epochs,
        loss,
    )


def resume(args: argparse.Namespace, accelerator: Accelerator, run: TrainingRun) -> tuple[int, int, int]:
    """(global step, first epoch, batches to skip in it): from a checkpoint, or (0, 0, 0) for a fresh start."""
    resume_path = resolve_resume_path(args.resume_from_checkpoint, args.output_dir)
    if resume_path is None:
        if args.resume_from_checkpoint == "latest":
            logger.info(f"resume_from_checkpoint=latest: no complete checkpoint in {args.output_dir}; starting fresh")
        return 0, 0, 0
    accelerator.load_state(str(resume_path))  # weights, optimizer, LR schedule, RNG states
    global_step = json.loads((resume_path / "checkpoint.json").read_text())["step"]
    first_epoch = global_step // run.steps_per_epoch
    skip_batches = (global_step % run.steps_per_epoch) * args.gradient_accumulation_steps
    logger.info(f"resumed from {resume_path} at step {global_step} (epoch {first_epoch}, skip {skip_batches})")
    return global_step, first_epoch, skip_batches


def best_iou_so_far(args: argparse.Namespace, resumed: bool) -> float:
    """The val/iou that checkpoint-best/ holds, which a new best must beat; a fresh run starts from nothing."""
    record = best_record(args.output_dir)
    if record is None:
        return -math.inf
    if not resumed:
        logger.info(f"{BEST} in {args.output_dir} is from an earlier run: this run's first validation replaces it")
        return -math.inf
    return record["val/iou"]


def keep_if_best(
    args: argparse.Namespace, accelerator: Accelerator, run: TrainingRun, step: int, metrics: dict, best: float
) -> float:
    """Replace checkpoint-best/ when this validation beats it (strictly); returns the best val/iou. All ranks."""
    if not metrics["val/iou"] > best:  # every rank holds the same gathered metrics, so all decide alike
        return best
    record = {"step": step, "val/iou": metrics["val/iou"], "metrics": metrics}
    path = save_best_checkpoint(
        lambda folder: save_weights(accelerator, args, run.transformer, folder),
        args.output_dir,
        record,
        accelerator.is_main_process,
        accelerator.wait_for_everyone,
    )
    logger.info(f"saved {path}: step {step}, val/iou {metrics['val/iou']:.4f} (previous best {best:.4f})")
    return metrics["val/iou"]


def train(args: argparse.Namespace, accelerator: Accelerator, run: TrainingRun, start: tuple[int, int, int]):
    """The training loop; returns (optimizer steps done, last validation metrics, why it stopped early or None)."""
    global_step, first_epoch, skip_batches = start
    stop = StopRequest(args.max_train_time_minutes)
    transformer, optimizer, lr_scheduler = run.transformer, run.optimizer, run.lr_scheduler
    best_iou = best_iou_so_far(args, resumed=global_step > 0)
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"steps: {run.max_train_steps} ({run.num_epochs} epochs x {run.steps_per_epoch}); global batch {total_batch}"
    )
    progress = tqdm(
        range(run.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    last_metrics, window_start, window_samples = {}, time.perf_counter(), 0
    window_loss, window_batches = torch.zeros((), device=accelerator.device), 0

    for epoch in range(first_epoch, run.num_epochs):
        run.train_loader.set_epoch(epoch)  # the sampler's permutation and augmentation seeds depend on (seed, epoch)
        active_loader = run.train_loader
        if epoch == first_epoch and skip_batches:
            active_loader = accelerator.skip_first_batches(run.train_loader, skip_batches)
        for batch in active_loader:
            with accelerator.accumulate(transformer):
                image_latents, mask_latents = batch_latents(run.vae, batch)
                with accelerator.autocast():
                    predicted = run.predictor.predict_latents(image_latents)
                gt_mask = batch_gt_mask(batch, args.mask_classes)
                loss = run.loss(predicted, mask_latents, gt_mask, batch.get("valid_mask"))
                window_loss, window_batches = window_loss + loss.detach(), window_batches + 1
                if accelerator.sync_gradients:
                    # One host sync per optimizer step, before it (DeepSpeed steps inside backward): the mean loss
                    # of the accumulation window over all ranks, whether any rank was asked to stop, the LR.
                    stop_flag = torch.tensor(float(stop.reason() is not None), device=accelerator.device)
                    gathered = accelerator.gather(torch.stack([window_loss, stop_flag])).view(-1, 2).tolist()
                    mean_loss = sum(row[0] for row in gathered) / len(gathered) / window_batches
                    stop_now = any(row[1] > 0 for row in gathered)
                    step_lr = optimizer.param_groups[0]["lr"]
                    if not math.isfinite(mean_loss):  # stop before the bad gradient reaches the weights
                        raise FloatingPointError(
                            f"non-finite training loss {mean_loss} at step {global_step + 1} (epoch {epoch}); the "
                            f"last good checkpoint in {args.output_dir} is untouched. Lower learning_rate or check "
                            "the data."
                        )
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and accelerator.distributed_type != DistributedType.DEEPSPEED:
                    grad_norm = accelerator.clip_grad_norm_(transformer.parameters(), args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not optimizer.step_was_skipped:
                    lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            window_samples += image_latents.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            logs = {
                "train/loss": mean_loss,
                "train/lr": step_lr,
                "train/samples_per_s": window_samples / (time.perf_counter() - window_start),
            }
            peak_gib = peak_memory_gib(accelerator.device)  # CUDA: allocated by tensors; CPU: peak RSS
            if peak_gib is not None:
                logs["train/peak_memory_gib"] = peak_gib
            if grad_norm is not None:
                logs["train/grad_norm"] = float(grad_norm)
            accelerator.log(logs, step=global_step)
            progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{step_lr:.2e}")
            window_loss, window_batches = torch.zeros((), device=accelerator.device), 0

            checkpoint_due = global_step % args.checkpointing_steps == 0 or global_step == run.max_train_steps
            if checkpoint_due or stop_now:
                path = save_checkpoint(
                    accelerator.save_state,
                    args.output_dir,
                    global_step,
                    {"epoch": epoch, "loss": mean_loss},
                    args.checkpoints_total_limit,
                    accelerator.is_main_process,
                    accelerator.wait_for_everyone,
                )
                logger.info(f"saved {path}")
            if stop_now and global_step < run.max_train_steps:
                return global_step, last_metrics, stop.reason() or "a stop request on another rank"
            if run.val_loader is not None and (
                global_step % args.validation_steps == 0 or global_step == run.max_train_steps
            ):
                transformer.eval()
                last_metrics = run_validation(run.predictor, run.val_loader, accelerator, args, global_step)
                transformer.train()
                logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_metrics.items()))
                best_iou = keep_if_best(args, accelerator, run, global_step, last_metrics, best_iou)
            window_start, window_samples = time.perf_counter(), 0  # throughput excludes checkpoints and validation
            if global_step >= run.max_train_steps:
                return global_step, last_metrics, None
    return global_step, last_metrics, None


def finish(args: argparse.Namespace, accelerator: Accelerator, run: TrainingRun, steps: int, metrics: dict) -> None:
    """The final transformer/ (gathered under ZeRO-3), model card and summary."""
    accelerator.wait_for_everyone()
    rank_checksums = check_replicas_agree(accelerator, run.transformer)
    save_weights(accelerator, args, run.transformer, Path(args.output_dir))
    if args.train_mode == "lora" and args.lora_save_merged:  # last: merging changes the model in place
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(run.transformer)
            write_transformer(unwrapped, merged_state_dict(unwrapped), Path(args.output_dir) / "transformer")
    if accelerator.is_main_process:
        write_model_card(args, Path(args.output_dir), steps, metrics)
        summary = {
            "steps": steps,
            "final_validation": metrics,
            "best_validation": best_record(args.output_dir),
            "rank_weight_checksums": rank_checksums,
        }
        atomic_write_json(Path(args.output_dir) / "train_summary.json", summary)
        saved = LORA_DIR if args.train_mode == "lora" else "transformer"
        logger.info(f"saved {Path(args.output_dir) / saved}; final validation: {metrics}")
    accelerator.end_training()


def main() -> None:
    args = load_config(training=True)
    accelerator = set_up(args)
    run = build(args, accelerator)
    start = resume(args, accelerator, run)
    steps, metrics, stopped_by = train(args, accelerator, run, start)
    if stopped_by:
        logger.info(
            f"stopped at step {steps} of {run.max_train_steps} ({stopped_by}) after writing checkpoint-{steps}; "
            "continue with --resume_from_checkpoint latest"
        )
        accelerator.end_training()
        return
    finish(args, accelerator, run, steps, metrics)


if __name__ == "__main__":
    main()
