"""`python -m bench.toy.train [--quick] [--out DIR] [--stages vae,unet,clip]`: retrain the toy models.

Deterministic: fixed seeds, `torch.use_deterministic_algorithms`, a fixed thread count (default 1:
bit-identical reruns on the same torch build). Writes a diffusers-format folder (vae/, unet/,
text_encoder/, scheduler/, model_index.json) plus clip/ (open_clip) and training/<stage>.json
(settings, wall time, sizes and the output slices the tests check after loading).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from bench.toy import MODEL_DIR
from bench.toy.architecture import new_scheduler, num_params
from bench.toy.clip import save_clip
from bench.toy.data import TRAIN_SEED, toy_set
from bench.toy.fingerprint import clip_slice, unet_slice, vae_slice
from bench.toy.train_clip import train_clip
from bench.toy.train_unet import UNetTraining, train_unet
from bench.toy.train_vae import train_vae

STAGES = ("vae", "unet", "clip")
# One pass per model, sized so the whole recipe takes under an hour on one CPU thread (docs/toy_world.md).
FULL = {
    "train_images": 20000,
    "vae": {"steps": 1200, "batch_size": 16, "lr": 2e-3, "seed": 10},
    "unet": {"steps": 5000, "batch_size": 32, "lr": 1e-3, "seed": 11},
    "clip": {"steps": 3000, "batch_size": 64, "lr": 1e-3, "seed": 12},
}
QUICK = {
    "train_images": 40,
    "vae": {"steps": 2, "batch_size": 4, "lr": 1e-3, "seed": 10},
    "unet": {"steps": 2, "batch_size": 4, "lr": 1e-3, "seed": 11},
    "clip": {"steps": 2, "batch_size": 8, "lr": 1e-3, "seed": 12},
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": [None, None],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_stage(out: Path, stage: str, info: dict) -> None:
    meta = {"stage": stage, "torch": torch.__version__, "python": platform.python_version(), **info}
    (out / "training").mkdir(parents=True, exist_ok=True)
    (out / "training" / f"{stage}.json").write_text(json.dumps(meta, indent=2) + "\n")


def run(out: Path, stages: list[str], settings: dict, threads: int) -> None:
    """Train `stages` with `settings` (FULL or QUICK) into `out`; torch's global settings are restored after."""
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        _run(out, stages, settings, threads)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _run(out: Path, stages: list[str], settings: dict, threads: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.time()
    data = toy_set(TRAIN_SEED, settings["train_images"])
    log(f"drew {len(data)} training scenes in {time.time() - t0:.0f}s")
    common = {"threads": threads, "train_images": len(data), "train_seed": TRAIN_SEED}
    if "vae" in stages:
        start = time.time()
        vae, info = train_vae(data, log=log, **settings["vae"])
        vae.save_pretrained(out / "vae")
        info.update(wall_seconds=round(time.time() - start, 1), params=num_params(vae), slice=vae_slice(vae))
        write_stage(out, "vae", {**common, **info, "scaling_factor": vae.config.scaling_factor})
    if "unet" in stages:
        vae = AutoencoderKL.from_pretrained(out / "vae").eval().requires_grad_(False)
        start = time.time()
        unet, text_encoder, info = train_unet(data, vae, UNetTraining(**settings["unet"]), log=log)
        unet.save_pretrained(out / "unet")
        text_encoder.save_pretrained(out / "text_encoder")
        new_scheduler().save_pretrained(out / "scheduler")
        (out / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
        info.update(
            wall_seconds=round(time.time() - start, 1),
            params={"unet": num_params(unet), "text_encoder": num_params(text_encoder)},
            slice=unet_slice(unet, text_encoder),
        )
        write_stage(out, "unet", {**common, **info})
    if "clip" in stages:
        start = time.time()
        model, info = train_clip(data, log=log, **settings["clip"])
        save_clip(model, out / "clip")
        info.update(wall_seconds=round(time.time() - start, 1), params=num_params(model), slice=clip_slice(model))
        write_stage(out, "clip", {**common, **info})
    log(f"done in {time.time() - t0:.0f}s; {out} holds {folder_bytes(out) / 1e6:.2f} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--quick", action="store_true", help="a few steps on a few scenes (tests); needs --out")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it; default 1)")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"--stages has {unknown}; expected a comma-separated subset of {list(STAGES)}.")
    if args.quick and args.out.resolve() == MODEL_DIR.resolve():
        parser.error(f"--quick would overwrite the shipped models in {MODEL_DIR}; pass --out to a scratch folder.")
    run(args.out, stages, QUICK if args.quick else FULL, args.threads)


if __name__ == "__main__":
    main()
