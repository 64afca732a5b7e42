"""`python -m bench.perf.toy`: one toy UNet training step with 8 attention heads against the shipped 2.

diffusers' `attention_head_dim` is the number of heads: the toy UNet's 32/64-wide attention at 8 heads
has heads of width 4 and 8, which CPU flash attention runs slowly; 2 heads hold the same parameters.
Prints the best-of-`--repeats` seconds per step (UNet + text encoder, forward, backward, AdamW) and
the ratio. A script, not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel

from bench.perf.gradsam import best_time
from bench.toy.architecture import UNET, new_text_encoder, num_params


def step_seconds(heads: int, batch_size: int, repeats: int) -> tuple[float, int]:
    """Best seconds of one training step, and the UNet's parameter count, at `heads` attention heads."""
    torch.manual_seed(0)
    unet, text_encoder = UNet2DConditionModel(**{**UNET, "attention_head_dim": heads}), new_text_encoder()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params)
    ids = torch.randint(0, 49406, (batch_size, 77))
    z, t = torch.randn(batch_size, 4, 16, 16), torch.randint(0, 1000, (batch_size,))

    def step() -> None:
        loss = unet(z, t, encoder_hidden_states=text_encoder(ids)[0]).sample.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds, _ = best_time(step, repeats, warmup=2)
    return seconds, num_params(unet)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="the recipe's UNet batch (bench/toy/train.py)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the recipe trains on one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"toy UNet training step, batch {args.batch_size}, torch threads {torch.get_num_threads()}:")
    figures = {heads: step_seconds(heads, args.batch_size, args.repeats) for heads in (8, 2)}
    for heads, (seconds, params) in figures.items():
        print(f"  {heads} heads  {seconds:7.3f} s/step   ({params:,} UNet parameters)")
    print(f"  2 heads are {figures[8][0] / figures[2][0]:.2f}x faster than 8")


if __name__ == "__main__":
    main()
