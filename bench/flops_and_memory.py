"""FLOPs and peak training memory of the full-size SD3.5-medium step at 1024 px, on a CPU, without running it.

    python -m bench.flops_and_memory                 # everything: 6-15 min per memory row on a 2-core CPU
    python -m bench.flops_and_memory --parts flops   # FLOP counts only (~15 s)
    python -m bench.flops_and_memory --parts memory --gradient_checkpointing off
    python -m bench.flops_and_memory --parts memory --train_mode lora   # LoRA: frozen bf16 base, fp32 adapters
    python -m bench.flops_and_memory --parts pixel_loss  # what loss: pixel adds: decoder in the graph (~1-5 min)

FLOPs: torch's FlopCounterMode counts the real architecture (random init, built on the meta device: no memory, no
compute): transformer forward + backward for one sample, VAE encode of one image, VAE decode of one latent. Attention
is counted: on meta, SDPA decomposes into bmm ops (QK^T and PV), checked against the analytic attention FLOPs. The
count is compared with the 6·N·T rule of thumb.

Memory: the training step as trainer.py runs it (frozen bf16 VAE encodes image and mask under no_grad, transformer
forward under bf16 autocast with fp32 master weights, latent MSE, backward, gradient clipping, fused AdamW, zero_grad)
for two steps under FakeTensorMode, with torch.distributed._tools.mem_tracker.MemTracker attributing every tensor to
weights / gradients / optimizer states / activations. Fake tensors carry shapes and dtypes only, so this estimates what
a GPU would hold (tensor memory; no allocator fragmentation, CUDA context or library workspaces). With
`--train_mode lora` the step is trainer.py's LoRA step instead: the base transformer frozen in bf16, adapters
(models.lora.add_lora: `--lora_rank`, alpha = rank, config.yaml's `lora_target_modules`) in fp32, fused AdamW states
for the adapters only. Other memory options (8-bit optimizer states, ZeRO-2 with optimizer offload) are derived from
that breakdown and labelled as estimates.

Pixel loss (`--parts pixel_loss`): what `loss: pixel` adds to a step, the frozen bf16 VAE decoder run inside autograd
on the predicted mask latents, BCE + soft Dice (models.losses.bce_dice) and the backward through the decoder to those
latents (the decoder's weights get no gradient). FLOPs counted on the meta device; memory tracked the same way as the
step (FakeTensor + MemTracker), with and without decoder gradient checkpointing. The decoder runs after the
transformer's forward, while its activations are alive, so the decoder's peak adds to the step's peak.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from unittest import mock

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

from bench.common import (
    FIXED_TIMESTEP,
    TEXT_TOKENS,
    FlopCount,
    TrainFlops,
    attention_forward_flops,
    build_transformer,
    build_vae,
    count_flops,
    default_dtype,
    lora_settings,
    run_header,
    tera,
    token_groups,
    transformer_train_flops,
    vae_flops,
)
from demo.assets import SD35_MEDIUM_TRANSFORMER_CONFIG, SD35_MEDIUM_VAE_CONFIG
from models.lora import add_lora
from models.losses import LOSSES, bce_dice
from models.segmenter import MaskPredictor, decode_mask_unclamped, encode_latents
from utils.measure import count_parameters
from utils.tables import markdown_table

GIB = 2**30
SDPA_OPS = ("scaled_dot_product",)
MATMUL_OPS = ("aten.bmm", "aten.baddbmm")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", nargs="+", choices=("flops", "memory", "pixel_loss"), default=["flops", "memory", "pixel_loss"]
    )
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--text_tokens", type=int, default=TEXT_TOKENS, help="77 CLIP + 256 T5 tokens")
    parser.add_argument(
        "--compare_text_tokens",
        type=int,
        nargs="*",
        default=[154],
        help="also count the transformer with these text lengths (154 = 77 CLIP + 77 T5, a common shorter setting)",
    )
    parser.add_argument("--batch_size", type=int, default=1, help="memory estimate batch size")
    parser.add_argument("--steps", type=int, default=2, help="training steps tracked (>= 2: states exist in step 2)")
    parser.add_argument(
        "--gradient_checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"], help="memory rows"
    )
    parser.add_argument("--num_gpus", type=int, default=4, help="data-parallel ranks for the ZeRO-2 estimate")
    parser.add_argument(
        "--train_mode", choices=("full", "lora"), default="full", help="lora: frozen bf16 base + fp32 adapters"
    )
    parser.add_argument("--lora_rank", type=int, default=32, help="train_mode lora: adapter rank (lora_alpha = rank)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs


def attention_ops(flops: FlopCount) -> int:
    """FLOPs of the ops attention runs as: fused SDPA kernels, or bmm after SDPA's decomposition on meta."""
    return flops.op_flops(*SDPA_OPS, *MATMUL_OPS)


def flops_report(args: argparse.Namespace) -> None:
    config, vae_config = SD35_MEDIUM_TRANSFORMER_CONFIG, SD35_MEDIUM_VAE_CONFIG
    image_tokens = (args.resolution // 8 // config["patch_size"]) ** 2
    started = time.perf_counter()
    print(f"counting transformer forward + backward at {args.resolution} px ...", flush=True)
    train = transformer_train_flops(config, args.resolution, args.text_tokens)
    print("counting VAE encode and decode ...", flush=True)
    encode, decode = vae_flops(vae_config, args.resolution)
    attention = attention_forward_flops(config, image_tokens, args.text_tokens)
    vae_attention = 4 * (args.resolution // 8) ** 4 * vae_config["block_out_channels"][-1]  # the mid-block attention
    rows = [
        ("transformer forward", tera(train.forward.total), tera(attention)),
        ("transformer backward", tera(train.backward.total), tera(2 * attention)),
        ("**transformer forward + backward**", f"**{tera(train.total)}**", tera(3 * attention)),
        ("VAE encode (one image)", tera(encode.total), tera(vae_attention)),
        ("VAE decode (one latent)", tera(decode.total), tera(vae_attention)),
        ("training step, cached latents (= transformer fwd + bwd)", tera(train.total), "-"),
        ("training step, VAE in the step (+ image and mask encode)", tera(train.total + 2 * encode.total), "-"),
        ("inference (encode + forward + decode)", tera(encode.total + train.forward.total + decode.total), "-"),
    ]
    for tokens in args.compare_text_tokens:
        other = transformer_train_flops(config, args.resolution, tokens)
        rows.append((f"transformer forward + backward, {tokens} text tokens", tera(other.total), "-"))
    print(
        f"\nFLOPs per sample at {args.resolution} px, {image_tokens} image tokens + {args.text_tokens} text tokens, "
        "counted with FlopCounterMode (TFLOP; a multiply-add = 2 FLOPs)\n"
    )
    print(markdown_table(("part", "TFLOP (counted)", "of which attention QK^T + PV (analytic)"), rows))
    print_attention_check(train, encode, decode, attention, vae_attention)
    print_six_nt(config, image_tokens, args.text_tokens, train.total, attention)
    print(f"\n(FLOP counting took {time.perf_counter() - started:.0f} s)\n", flush=True)


def print_attention_check(
    train: TrainFlops, encode: FlopCount, decode: FlopCount, attention: int, vae_attention: int
) -> None:
    """Confirm the count includes attention: on meta, SDPA runs as bmm ops, which must cover the analytic FLOPs."""
    found = [attention_ops(train.forward), attention_ops(train.backward), attention_ops(encode), attention_ops(decode)]
    expected = (attention, 2 * attention)
    transformer_ok = all(abs(f - e) <= 0.01 * e for f, e in zip(found[:2], expected, strict=True))
    vae_ok = all(f >= 0.99 * vae_attention for f in found[2:])
    status = "yes" if transformer_ok and vae_ok else "NO: the count misses attention, check FlopCounterMode's ops"
    print(
        f"\nAttention counted: {status}. Transformer: bmm/SDPA ops hold {tera(found[0])} TFLOP forward and "
        f"{tera(found[1])} backward = 1x and 2x the analytic attention (joint image+text attention in every block, "
        "plus image-only attention in the dual-attention blocks; the backward's four matmuls give dP, dV, dQ, dK). "
        f"VAE: bmm ops hold {tera(found[2])} / {tera(found[3])} TFLOP (mid-block attention plus its q/k/v/out "
        f"projections). A fused flash-attention backward also recomputes QK^T: +{tera(attention / 2)} TFLOP of "
        "hardware FLOPs per sample, not counted here (model FLOPs, as MFU uses)."
    )


def print_six_nt(config: dict, image_tokens: int, text_tokens: int, counted: int, attention_fwd: int) -> None:
    model = build_transformer(config, "meta")
    params, groups = count_parameters(model), token_groups(model)
    six_nt = 6 * params * image_tokens
    token_aware = 6 * (groups["image"] * image_tokens + groups["text"] * text_tokens + groups["per-sample"])
    rows = [
        ("N, transformer parameters (meta device)", f"{params:,}"),
        (f"  image stream (sees {image_tokens} image tokens)", f"{groups['image']:,}"),
        (f"  text stream (sees {text_tokens} text tokens)", f"{groups['text']:,}"),
        ("  adaLN modulation + timestep/pooled embedders (1 vector per sample)", f"{groups['per-sample']:,}"),
        (f"6·N·T, T = {image_tokens} image tokens (TFLOP)", tera(six_nt)),
        ("counted forward + backward (TFLOP)", tera(counted)),
        ("counted / 6·N·T", f"{counted / six_nt:.2f}"),
        ("token-aware 6·Σ N_group·T_group (TFLOP)", tera(token_aware)),
        ("token-aware + 3 x attention forward (TFLOP)", tera(token_aware + 3 * attention_fwd)),
    ]
    print("\nCounted FLOPs against 6·N·T\n")
    print(markdown_table(("quantity", "value"), rows))
    print(
        f"\n6·N·T assumes every parameter sees every token. In the MMDiT only the image stream sees the "
        f"{image_tokens} image tokens: the text stream sees {text_tokens} text tokens and the adaLN modulation "
        "linears (a third of the parameters) act on a single conditioning vector per sample. Attention FLOPs, absent "
        "from 6·N·T, add back part of the difference."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Memory


class _NoHandle:
    def remove(self) -> None:
        pass


class StepMemTracker(MemTracker):
    """MemTracker that tolerates the per-call `reset_mod_stats()` this training step needs, and updates peaks in
    time proportional to the modules running, not to all modules seen.

    MemTracker refuses a second forward of a root module without a reset (the VAE runs twice per step, the
    transformer once per step); after a reset, its backward hooks can still fire for the frozen VAE's modules (which
    did no backward work: encode_latents runs under no_grad), and those hooks must then be skipped.

    Speed: MemTracker's `_update_peak_stats` runs after every op and walks every tracked module (a WeakIdKeyDictionary)
    to find the active ones. With LoRA's ~2,000 extra modules and checkpointing's recomputation that walk made step 1's
    backward take 6303 s at 1024 px (2-core CPU, loaded). Here the active modules are looked up by name from
    `_mod_tracker.parents`; the result is the same (tests/bench/test_flops_and_memory.py compares the two).
    """

    def __init__(self) -> None:
        super().__init__()
        self._stats_by_fqn: dict[str, object] = {}  # mod_fqn -> _ModMemStats, for the modules tracked since the reset

    def reset_mod_stats(self) -> None:
        super().reset_mod_stats()
        self._stats_by_fqn.clear()

    def _pre_fw_hook(self, module, inputs) -> None:
        super()._pre_fw_hook(module, inputs)
        mod_stats = self.memory_tracking[module]
        self._stats_by_fqn[mod_stats.mod_fqn] = mod_stats

    def _update_peak_stats(self, peak_state) -> None:
        # MemTracker's own loop, over the active modules only (`mod_fqn in parents` is its condition).
        curr_snap = self._curr_mem_snap
        for fqn in self._mod_tracker.parents:
            mod_stats = self._stats_by_fqn.get(fqn)
            if mod_stats is None or peak_state not in mod_stats.snapshots:
                continue
            for dev, dev_snap in curr_snap.items():
                if mod_stats.local_peak.get(dev, 0) < dev_snap[_TOTAL_KEY]:
                    mod_stats.local_peak[dev] = dev_snap[_TOTAL_KEY]
                    mod_stats.snapshots[peak_state][-1][dev] = deepcopy(dev_snap)
        for dev, dev_snap in curr_snap.items():
            if self._peak_mem.get(dev, 0) < dev_snap[_TOTAL_KEY]:
                self._peak_mem[dev] = dev_snap[_TOTAL_KEY]
                self._peak_mem_snap[dev] = deepcopy(dev_snap)

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True) -> tuple[int, int]:
        # A frozen parameter (LoRA's base weights) cannot take a gradient hook, and gets no gradient: mark it as
        # hooked already so that MemTracker installs none.
        for param in module.parameters():
            if not param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                self._param_to_grad_hook_handles[param] = (_NoHandle(), _NoHandle())
        return super()._track_module_params_and_buffers(module, install_grad_hooks)

    def _pre_bw_hook(self, module, args) -> None:
        if module is not None and module in self.memory_tracking:
            super()._pre_bw_hook(module, args)

    def _post_bw_hook(self, module, args) -> None:
        if module is not None and module in self.memory_tracking:
            super()._post_bw_hook(module, args)


def breakdown(snapshot: dict) -> dict[str, int]:
    """MemTracker's per-device snapshot -> bytes by kind, summed over devices."""
    names = {
        "Parameter": "weights",
        "Buffer": "buffers",
        "Gradient": "gradients",
        "Optstate": "optimizer states",
        "Activation": "activations",
        "Temp": "activations",
        "Other": "activations",
        "Total": "total",
    }
    result = dict.fromkeys(("weights", "buffers", "gradients", "optimizer states", "activations", "total"), 0)
    for device_snapshot in snapshot.values():
        for kind, num_bytes in device_snapshot.items():
            result[names[getattr(kind, "value", kind)]] += num_bytes
    return result


@dataclass
class MemoryRun:
    gradient_checkpointing: bool
    transformer_params: int  # trainable: every parameter (full), the adapters' (lora)
    peak: dict[str, int]  # by kind, at the moment of the overall peak
    moments: dict[str, dict[str, int]]  # by kind: overall peak and the transformer's forward / backward peaks
    autocast_copy_bytes: int
    seconds: float


def track_training_memory(args: argparse.Namespace, gradient_checkpointing: bool) -> MemoryRun:
    """Run `args.steps` full-size training steps on fake tensors under MemTracker."""
    lora = args.train_mode == "lora"
    label = f"[memory{', LoRA' if lora else ''}, gradient checkpointing {'on' if gradient_checkpointing else 'off'}]"
    started = time.perf_counter()
    side = args.resolution
    with FakeTensorMode(allow_non_fake_inputs=True):
        # full: fp32 master weights. lora: as trainer.py, the frozen base in the compute precision (built in bf16:
        # FakeTensorMode cannot swap parameters in .to()) and fp32 adapters.
        with default_dtype(torch.bfloat16 if lora else torch.float32):
            transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER_CONFIG).train()
        if lora:
            add_fake_lora(transformer, args)
        if gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        with default_dtype(torch.bfloat16):
            # requires_grad stays on: MemTracker hooks every parameter of a called module. encode_latents runs the
            # VAE under no_grad, so it never gets gradients.
            vae = AutoencoderKL(**SD35_MEDIUM_VAE_CONFIG).eval()
        trainable = [p for p in transformer.parameters() if p.requires_grad]  # trainer.py's build_optimizer
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)  # trainer.py's choice on CUDA
        prompt = torch.randn(1, TEXT_TOKENS, SD35_MEDIUM_TRANSFORMER_CONFIG["joint_attention_dim"])
        pooled = torch.randn(1, SD35_MEDIUM_TRANSFORMER_CONFIG["pooled_projection_dim"])
        predictor = MaskPredictor(vae, transformer, prompt, pooled, timestep=FIXED_TIMESTEP)
        tracker = StepMemTracker()
        tracker.track_external(transformer, vae, optimizer)
        with tracker:
            for step in range(args.steps):
                step_start = time.perf_counter()
                pixels = torch.rand(args.batch_size, 3, side, side) * 2 - 1
                masks = torch.rand(args.batch_size, 3, side, side).round() * 2 - 1
                tracker.reset_mod_stats()
                image_latents = encode_latents(vae, pixels)
                tracker.reset_mod_stats()
                mask_latents = encode_latents(vae, masks)
                tracker.reset_mod_stats()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    predicted = predictor.predict_latents(image_latents.float())
                print(
                    f"{label} step {step + 1}/{args.steps}: forward done ({time.perf_counter() - step_start:.0f} s)",
                    flush=True,
                )
                loss = LOSSES["latent_mse"](predicted, mask_latents)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del predicted, loss
                print(
                    f"{label} step {step + 1}/{args.steps}: backward + AdamW done "
                    f"({time.perf_counter() - step_start:.0f} s)",
                    flush=True,
                )
        if any(p.grad is not None for p in vae.parameters()):
            raise RuntimeError("the frozen VAE received gradients: the estimate would not match trainer.py")
        stats = tracker.memory_tracking[transformer].snapshots
        moments = {"overall peak": breakdown(tracker.get_tracker_snapshot("peak"))}
        for state_name, state in (
            ("transformer forward peak", "Peak-Forward"),
            ("transformer backward peak", "Peak-Backward"),
        ):
            snapshots = [s for key, value in stats.items() if key.value == state for s in value]
            if snapshots:
                moments[state_name] = max((breakdown(s) for s in snapshots), key=lambda b: b["total"])
        params, copies = sum(p.numel() for p in trainable), autocast_copy_bytes(transformer)
    seconds = time.perf_counter() - started
    return MemoryRun(gradient_checkpointing, params, moments["overall peak"], moments, copies, seconds)


def add_fake_lora(transformer: torch.nn.Module, args: argparse.Namespace) -> None:
    """models.lora.add_lora on fake tensors. peft moves each new adapter to its base layer's device and dtype with
    `Module.to()`, which FakeTensorMode cannot do (it swaps parameters); everything is already on the one (fake CPU)
    device and the adapters are created in fp32, where add_lora puts them anyway, so `.to()` is skipped meanwhile."""
    with mock.patch.object(torch.nn.Module, "to", lambda self, *a, **k: self):
        add_lora(transformer, lora_settings(args.lora_rank))


def autocast_copy_bytes(model: torch.nn.Module) -> int:
    """Bytes of the bf16 copies bf16 autocast makes of the fp32 weights of linear and conv layers (fp32 master
    weights; bf16 weights, e.g. LoRA's frozen base, need no copy)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    params = (p for layer in layers for p in layer.parameters(recurse=False))
    return 2 * sum(p.numel() for p in params if p.dtype == torch.float32)


def option_estimates(run: MemoryRun, num_gpus: int) -> dict[str, tuple[int, int]]:
    """(low, high) peak bytes per GPU for each memory option: the maximum over the tracked moments.

    fp32 AdamW: tracked (low = high). 8-bit AdamW: the two fp32 states (8 B/param) replaced by 8-bit ones
    (2 B/param; block scales ignored). ZeRO-2 + optimizer offload: fp32 master weights and optimizer states leave the
    GPU, bf16 working weights (2 B/param) stay, each rank keeps 1/num_gpus of the gradients; the tracked activations
    include autocast's bf16 weight copies, which a bf16 DeepSpeed model does not make: high keeps them, low removes
    all of them at every moment.
    """
    n, copies = run.transformer_params, run.autocast_copy_bytes
    zero2 = f"ZeRO-2 + optimizer offload, {num_gpus} GPUs"
    estimates = {"fp32 AdamW": (0, 0), "8-bit AdamW states": (0, 0), zero2: (0, 0)}
    for moment in run.moments.values():
        total, states, grads = moment["total"], moment["optimizer states"], moment["gradients"]
        eight_bit = total - states + (2 * n if states else 0)
        sharded = total - states - 4 * n + 2 * n - grads + grads // num_gpus
        candidates = {"fp32 AdamW": (total, total), "8-bit AdamW states": (eight_bit, eight_bit)}
        candidates[zero2] = (sharded - min(copies, moment["activations"]), sharded)
        for option, (low, high) in candidates.items():
            estimates[option] = (max(estimates[option][0], low), max(estimates[option][1], high))
    return estimates


def gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.1f}"


def memory_report(args: argparse.Namespace) -> None:
    runs = []
    for setting in args.gradient_checkpointing:
        runs.append(track_training_memory(args, setting == "on"))
        print(f"(gradient checkpointing {setting}: tracked in {runs[-1].seconds:.0f} s)", flush=True)
        print_tracked_table(args, runs[-1:])  # each row as soon as it exists: a LoRA row takes most of an hour here
    if args.train_mode == "full":  # the options below rework fp32 master weights and full-size optimizer states
        print_options_table(args, runs)


def print_tracked_table(args: argparse.Namespace, runs: Sequence[MemoryRun]) -> None:
    if args.train_mode == "lora":
        setting = (
            f"LoRA rank {args.lora_rank} ({runs[0].transformer_params:,} trainable parameters), frozen bf16 base, "
            "fp32 adapters, fused fp32 AdamW on the adapters"
        )
    else:
        setting = "fp32 master weights, fused fp32 AdamW"
    print(
        f"\nTracked memory of the full-size training step, {args.resolution} px, batch {args.batch_size}: bf16 "
        f"autocast, {setting}, step 2 (FakeTensor + MemTracker estimate, GiB)\n"
    )
    kinds = ("weights", "buffers", "gradients", "optimizer states", "activations")
    rows = []
    for run in runs:
        for moment, values in run.moments.items():
            checkpointing = "on" if run.gradient_checkpointing else "off"
            rows.append((checkpointing, moment, gib(values["total"]), *(gib(values[k]) for k in kinds)))
    print(markdown_table(("grad ckpt", "moment", "total", *kinds), rows))
    weights = "bf16 base transformer + fp32 adapters" if args.train_mode == "lora" else "fp32 transformer"
    print(
        f"\nweights: {weights} + bf16 VAE; buffers: the transformer's positional-embedding table "
        "(pos_embed_max_size 384, in the weights' dtype); activations: saved activations, temporaries and "
        f"autocast's bf16 weight copies ({gib(runs[0].autocast_copy_bytes)} GiB when all alive)."
    )


def print_options_table(args: argparse.Namespace, runs: Sequence[MemoryRun]) -> None:
    print(
        "\nMemory options, peak per GPU (GiB): fp32 AdamW rows are tracked, the others are estimates derived from "
        "the tracked breakdown\n"
    )
    rows = []
    for run in runs:
        n = run.transformer_params
        for option, (low, high) in option_estimates(run, args.num_gpus).items():
            if option == "fp32 AdamW":
                states, basis = 8 * n, "tracked"
            elif option.startswith("8-bit"):
                states, basis = 2 * n, "estimate: tracked - fp32 states + 2 B/param"
            else:
                states, basis = 0, "estimate: states + fp32 master on CPU, bf16 weights, gradients / GPUs"
            peak = gib(high) if low == high else f"{gib(low)}-{gib(high)}"
            checkpointing = "on" if run.gradient_checkpointing else "off"
            rows.append((option, checkpointing, peak, gib(states), f"{100 * states / high:.0f}%", basis))
    print(markdown_table(("option", "grad ckpt", "peak / GPU", "optimizer states on GPU", "share", "basis"), rows))
    print(
        "\nZeRO-2 range: the high end keeps autocast's bf16 weight copies that the tracker saw, the low end removes "
        "them (a bf16 DeepSpeed model computes from its bf16 weights directly, so no copies); the truth is near the "
        "low end at the forward/backward boundary. Not included: DeepSpeed's gradient buckets (reduce_bucket_size "
        "5e8 in configs/deepspeed/zero2_offload.json, ~1 GB each in bf16, more with overlap_comm), the CUDA context "
        "and allocator fragmentation. Host memory for the offloaded fp32 master weights and AdamW states: "
        f"{gib(12 * runs[0].transformer_params)} GiB, shared by the {args.num_gpus} ranks (ZeRO-2 partitions them)."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Pixel loss: the decoder inside the graph


def pixel_loss_step(vae: AutoencoderKL, latents: torch.Tensor, gt_mask: torch.Tensor) -> None:
    """trainer.py's pixel term for predicted latents that need a gradient: decode in autograd, BCE + Dice, backward."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = decode_mask_unclamped(vae, latents)
    bce_dice(raw, gt_mask).backward()


def pixel_loss_inputs(args: argparse.Namespace, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    side, latent_side = args.resolution, args.resolution // 8
    channels = SD35_MEDIUM_VAE_CONFIG["latent_channels"]
    latents = torch.randn(args.batch_size, channels, latent_side, latent_side, device=device, requires_grad=True)
    return latents, torch.rand(args.batch_size, 1, side, side, device=device).round()


def track_pixel_loss_memory(args: argparse.Namespace, checkpointing: bool) -> tuple[dict[str, int], float]:
    """(peak by kind, seconds) of the pixel term alone on fake tensors; the bf16 VAE's weights are counted apart."""
    started = time.perf_counter()
    with FakeTensorMode(allow_non_fake_inputs=True):
        with default_dtype(torch.bfloat16):
            vae = AutoencoderKL(**SD35_MEDIUM_VAE_CONFIG).requires_grad_(False).eval()
        if checkpointing:
            vae.enable_gradient_checkpointing()
        latents, gt_mask = pixel_loss_inputs(args, "cpu")
        tracker = StepMemTracker()
        tracker.track_external(vae)
        with tracker:
            pixel_loss_step(vae, latents, gt_mask)
        if any(p.grad is not None for p in vae.parameters()):
            raise RuntimeError("the frozen VAE received gradients: the estimate would not match trainer.py")
        peak = breakdown(tracker.get_tracker_snapshot("peak"))
    return peak, time.perf_counter() - started


def pixel_loss_report(args: argparse.Namespace) -> None:
    vae = build_vae(SD35_MEDIUM_VAE_CONFIG, "meta")  # FLOPs do not depend on the dtype
    latents, gt_mask = pixel_loss_inputs(args, "meta")
    with torch.no_grad():
        decode = count_flops(lambda: vae.decode(latents.detach()).sample)
    train = count_flops(lambda: pixel_loss_step(vae, latents, gt_mask))
    step = transformer_train_flops(SD35_MEDIUM_TRANSFORMER_CONFIG, args.resolution, args.text_tokens)
    print(f"\nloss: pixel, extra FLOPs per sample at {args.resolution} px (counted, TFLOP)\n")
    rows = [
        ("VAE decode (inference, no grad)", tera(decode.total), "-"),
        ("pixel term: decode in autograd + BCE/Dice + backward to the latents", tera(train.total), "-"),
        ("training step, cached latents, latent_mse", tera(step.total), "1.00"),
        ("training step, cached latents, latent_mse+pixel", tera(step.total + train.total), ""),
    ]
    rows[-1] = (*rows[-1][:2], f"{(step.total + train.total) / step.total:.2f}")
    print(markdown_table(("part", "TFLOP", "x latent_mse step"), rows))
    weights = sum(p.numel() for p in vae.parameters()) * 2
    print(f"\npixel term memory, {args.resolution} px, batch {args.batch_size}, bf16 VAE (FakeTensor + MemTracker)\n")
    rows = []
    for setting in args.gradient_checkpointing:
        peak, seconds = track_pixel_loss_memory(args, setting == "on")
        extra = peak["total"] - peak["weights"]
        rows.append((setting, gib(peak["total"]), gib(peak["weights"]), gib(extra), f"{seconds:.0f}"))
        print(f"(decoder gradient checkpointing {setting}: tracked in {seconds:.0f} s)", flush=True)
    header = ("decoder grad ckpt", "peak", "VAE weights (bf16)", "added to the step", "tracked in s")
    print(markdown_table(header, rows))
    print(
        f"\nThe VAE's weights ({gib(weights)} GiB in bf16) are already in every step's memory (it encodes in the "
        "step or built the cache); what the pixel term adds is the rest, alive together with the transformer's "
        "saved activations during the decoder's forward and backward."
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(run_header("# SD3.5-medium FLOPs and memory (CPU-side: meta device and FakeTensor)", torch.device("cpu")))
    if "flops" in args.parts:
        flops_report(args)
    if "memory" in args.parts:
        memory_report(args)
    if "pixel_loss" in args.parts:
        pixel_loss_report(args)


if __name__ == "__main__":
    main()
