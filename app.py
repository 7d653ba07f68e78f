"""A web demo of a trained model: upload images, see the overlay, the binary mask and the raw prediction.

    make app                                            # installs requirements-app.txt, exports the demo, serves it
    python app.py --model DIR_OR_HUB_ID [--host 127.0.0.1] [--port 7860] [--examples DIR]

--model is a pipeline folder written by export.py (or a Hub repo holding one). Uploaded files are read as
predict.py reads them (EXIF orientation, 16-bit and float grey scaled; see dataset.trans10k.load_image); files that
cannot be read are listed in the status line, never dropped silently. The threshold slider re-thresholds the raw
predictions already computed, without running the model again. Needs gradio (requirements-app.txt).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image

from dataset.trans10k import DatasetError, load_image
from evaluation.image_writer import raw_to_png_array
from models.pipeline import TransparencySegmentationPipeline, overlay_mask

DEFAULT_MODEL = "outputs/demo/pipeline"  # what `make app` exports from `make demo`'s run
DEFAULT_EXAMPLES = "demo_assets/trans10k/test/easy/images"
NUM_EXAMPLES = 4


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder (export.py) or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=Path, default=Path(DEFAULT_EXAMPLES), help="folder of example images")
    return parser.parse_args(argv)


def load_pipeline(model: str) -> TransparencySegmentationPipeline:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = TransparencySegmentationPipeline.from_pretrained(model, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_uploads(paths: Sequence[str]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(name, upright uint8 RGB) of each readable upload, and 'name: reason' for each that is not."""
    images, problems = [], []
    for path in paths:
        name = Path(path).name
        try:
            images.append((name, np.asarray(load_image(path))))
        except DatasetError as error:
            problems.append(f"{name}: {error.__cause__ or error}")
    return images, problems


def galleries(
    images: list[tuple[str, np.ndarray]], raws: list[np.ndarray], threshold: float
) -> tuple[list, list, list]:
    """(overlays, masks, raws) as gallery items (image, caption) at each image's own size."""
    overlays, masks, raw_images = [], [], []
    for (name, image), raw in zip(images, raws, strict=True):
        binary = raw >= threshold
        overlays.append((overlay_mask(image, binary), name))
        masks.append((Image.fromarray(binary.astype(np.uint8) * 255), name))
        raw_images.append((Image.fromarray(raw_to_png_array(torch.from_numpy(raw))), name))
    return overlays, masks, raw_images


def build_app(pipe: TransparencySegmentationPipeline, examples: Sequence[Path]) -> gr.Blocks:
    def segment(paths: list[str] | None, threshold: float):
        if not paths:
            raise gr.Error("upload one or more images first")
        images, problems = read_uploads(paths)
        raws = pipe([image for _, image in images], batch_size=4).raw if images else []
        status = f"{len(images)} image(s) segmented." + (" Not readable: " + "; ".join(problems) if problems else "")
        return (*galleries(images, raws, threshold), (images, raws), status)

    def rethreshold(state, threshold: float):
        images, raws = state or ([], [])
        return galleries(images, raws, threshold)

    with gr.Blocks(title="Transparent-object segmentation") as app:
        gr.Markdown("# Transparent-object segmentation\nUpload photos; transparent regions are tinted red.")
        with gr.Row():
            files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="uploads")
            with gr.Column():
                threshold = gr.Slider(0.0, 1.0, value=pipe.config.threshold, step=0.01, label="Threshold")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown(elem_id="status")
        with gr.Row():
            # PNG, not gradio's default WebP: the mask and raw pixels shown are exactly the pipeline's.
            overlay_gallery = gr.Gallery(label="Overlay", format="png", elem_id="overlay")
            mask_gallery = gr.Gallery(label="Mask", format="png", elem_id="mask")
            raw_gallery = gr.Gallery(label="Raw (255 x raw)", format="png", elem_id="raw")
        state = gr.State()
        outputs = [overlay_gallery, mask_gallery, raw_gallery]
        run.click(segment, inputs=[files, threshold], outputs=[*outputs, state, status])
        threshold.release(rethreshold, inputs=[state, threshold], outputs=outputs)
        if examples:
            gr.Examples(examples=[[[str(path)]] for path in examples], inputs=[files], label="Examples (demo data)")
    return app


def example_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:NUM_EXAMPLES]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        pipe = load_pipeline(args.model)
    except (ValueError, OSError) as error:  # an incomplete folder, or a hub id that is not there
        hint = " (run `make demo` first, or pass --model)" if args.model == DEFAULT_MODEL else ""
        print(f"app.py: error: cannot load --model {args.model}{hint}: {error}", file=sys.stderr)
        sys.exit(2)
    build_app(pipe, example_images(args.examples)).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
