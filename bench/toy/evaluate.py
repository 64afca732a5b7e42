"""`python -m bench.toy.evaluate [--models DIR]`: the toy models' quality bars (issue 8), measured.

1. VAE reconstruction PSNR on held-out scenes (seed 2; posterior mean, decoded as the harness does).
2. Toy CLIP zero-shot accuracy on held-out scenes: colour, shape, both (best of the 120 captions).
3. txt2img through the harness (baselines.txt2img, 50 DDPM steps, guidance 8, the model=toy loader; by
   default each of the 120 captions once): how often the sample has the prompted colour and shape,
   judged by the toy CLIP and by the oracle.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from baselines.txt2img import Txt2Img
from bench.config import CONF_DIR, REPO_ROOT
from bench.datasets.base import PromptSpec, ReferenceImage, WorkUnit
from bench.metrics.toy_clip import load_toy_clip
from bench.sd.backbone import Backbone
from bench.sd.diffusion import SamplingConfig, decode_latents
from bench.toy import MODEL_DIR
from bench.toy.clip import ZeroShot
from bench.toy.data import HELDOUT_SEED, ToySet, toy_set
from bench.toy.oracle import colour_region, region_shape
from bench.toy.world import COLOURS, SHAPES, all_captions, background

BARS = {
    "vae_psnr_db": 25.0,
    "clip_colour_acc": 0.95,
    "clip_shape_acc": 0.95,
    "txt2img_ok_clip": 0.7,
    "txt2img_ok_oracle": 0.7,
}


def load_toy_backbone(folder: Path, device: str = "cpu") -> Backbone:
    """The model=toy config (conf/model/toy.yaml) with its weights read from `folder`."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=["model=toy", f"model.path={folder.resolve()}", f"device={device}"])
    return instantiate(cfg.model, _convert_="all")


def shown_path(folder: Path) -> str:
    """The folder relative to the repository when inside it (so the recorded numbers hold no machine path)."""
    folder = folder.resolve()
    return str(folder.relative_to(REPO_ROOT)) if folder.is_relative_to(REPO_ROOT) else str(folder)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


@torch.no_grad()
def vae_psnr(backbone: Backbone, data: ToySet) -> float:
    """Mean PSNR (dB, peak 255) of decode(encode(x).mean) over held-out scenes."""
    values = []
    for i in range(0, len(data), 50):
        x = data.images[i : i + 50].float() / 127.5 - 1
        z = backbone.vae.encode(x).latent_dist.mean * backbone.vae.config.scaling_factor
        rec = decode_latents(backbone, z)  # uint8 [B, 64, 64, 3]
        ref = data.images[i : i + 50].permute(0, 2, 3, 1).numpy()
        values += [psnr(r, g) for r, g in zip(ref, rec, strict=True)]
    return float(np.mean(values))


def clip_accuracy(zero_shot: ZeroShot, data: ToySet) -> dict:
    preds = zero_shot(data.images)
    colour_ok = [p["colour"] == list(COLOURS)[c] for p, c in zip(preds, data.colour_ids.tolist(), strict=True)]
    shape_ok = [p["shape"] == SHAPES[s] for p, s in zip(preds, data.shape_ids.tolist(), strict=True)]
    return {
        "clip_colour_acc": float(np.mean(colour_ok)),
        "clip_shape_acc": float(np.mean(shape_ok)),
        "clip_both_acc": float(np.mean(np.logical_and(colour_ok, shape_ok))),
    }


def txt2img_subjects(backbone: Backbone, zero_shot: ZeroShot, count: int, out_dir: Path | None) -> dict:
    """`count` txt2img samples (captions spread over the world's 120, seed 51828) judged by CLIP and the oracle."""
    entries = all_captions()
    picks = [entries[(i * 61) % len(entries)] for i in range(count)]  # 61 is coprime to 120: all distinct
    sampling = SamplingConfig(num_inference_steps=50, guidance_scale=8.0)
    method, rows = Txt2Img(), []
    for i, (text, colour, shape, sub) in enumerate(picks):
        ref = ReferenceImage(
            image_id=f"{sub}/eval{i:04d}", category="toy", subcategory=sub, prompts=(), source="none",
            loader=lambda s=sub: Image.fromarray(background(s, HELDOUT_SEED, 0)),
        )  # fmt: skip
        unit = WorkUnit(ref, PromptSpec(text=text, subject=shape), 51828)
        image = method.generate(backbone, [unit.sample(np.zeros((64, 64, 3), np.uint8))], sampling)
        image = image[0].image
        pred = zero_shot(image[None])[0]
        found = region_shape(colour_region(image, colour))
        rows.append(
            {
                "prompt": text,
                "clip_colour": pred["colour"] == colour,
                "clip_shape": pred["shape"] == shape,
                "clip_scene": pred["subcategory"] == sub,
                "oracle_found": found is not None,
                "oracle_shape": found == shape,
            }
        )
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out_dir / f"{i:03d}_{text.replace(' ', '_')}.png")
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return {
        "txt2img_samples": count,
        "txt2img_ok_clip": float(np.mean([r["clip_colour"] and r["clip_shape"] for r in rows])),
        "txt2img_colour_clip": mean("clip_colour"),
        "txt2img_shape_clip": mean("clip_shape"),
        "txt2img_scene_clip": mean("clip_scene"),
        "txt2img_ok_oracle": mean("oracle_shape"),
        "txt2img_colour_oracle": mean("oracle_found"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=MODEL_DIR)
    parser.add_argument("--heldout", type=int, default=500, help="held-out scenes for the VAE and CLIP bars")
    parser.add_argument(
        "--samples", type=int, default=120, help="txt2img samples for the subject bar (120: every caption once)"
    )
    parser.add_argument("--save-samples", type=Path, default=None, help="folder for the txt2img PNGs")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (samples' bits depend on it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    backbone = load_toy_backbone(args.models)
    zero_shot = ZeroShot(load_toy_clip(args.models / "clip"))
    results = {"models": shown_path(args.models), "threads": args.threads}
    heldout = toy_set(HELDOUT_SEED, args.heldout)
    results["vae_psnr_db"] = vae_psnr(backbone, heldout)
    results.update(clip_accuracy(zero_shot, heldout))
    results.update(txt2img_subjects(backbone, zero_shot, args.samples, args.save_samples))
    results["seconds"] = round(time.time() - start, 1)
    print(f"toy models: {args.models}  (held-out scenes: {args.heldout}, txt2img samples: {args.samples})")
    for key, value in results.items():
        if key in BARS:
            verdict = "PASS" if value >= BARS[key] else "FAIL"
            print(f"  {key:24s} {value:8.3f}   bar >= {BARS[key]:<6g} {verdict}")
        elif isinstance(value, float):
            print(f"  {key:24s} {value:8.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
