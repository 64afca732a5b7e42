"""Score maps -> binary (or soft) subject masks on the latent grid (docs/paper.md §2.4, B5, B6).

Per subject: optional Gaussian blur and max-filter dilation on the SCORE, then the threshold
tau = mean + k * std (unbiased, as torch.std) per channel (or over the whole map), M = 1[S > tau],
then optional dilation and blur on the MASK (a blurred mask is soft, in [0, 1]); the union over
subjects is the element-wise max. `box_sum_once` is what the reference code computes instead
(B5): one 3x3 box SUM of the raw score (its Gaussian result is overwritten and its "dilation"
loop repeats the same linear filter), with blur and dilation off. `rule=top_fraction` is the
attribution study's faithfulness operator instead: exactly the `keep_fraction` of latent cells with
the highest score (summed over channels) are kept, in every channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from method.config import MaskConfig  # the settings (validated there); the functions below trust them


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian [size, size] (exp(-(x^2 + y^2) / (2 sigma^2)) / sum)."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).float()


def depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of x [C, h, w] with kernel [k, k], zero padding (same size)."""
    channels = x.shape[0]
    weight = kernel.to(x)[None, None].expand(channels, 1, *kernel.shape)
    return F.conv2d(x[None], weight, padding=kernel.shape[-1] // 2, groups=channels)[0]


def blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    return depthwise(x, gaussian_kernel(size, sigma))


def box_sum(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """The reference code's 3x3 ones convolution (a sum, not a mean), zero padding."""
    return depthwise(x, torch.ones(size, size))


def dilate(x: torch.Tensor, size: int, iterations: int) -> torch.Tensor:
    """Max filter of x [C, h, w] (borders see only the inside), repeated `iterations` times."""
    for _ in range(iterations):
        x = F.max_pool2d(x[None], size, stride=1, padding=size // 2)[0]
    return x


def threshold(score: torch.Tensor, k: float, scope: str) -> torch.Tensor:
    """M = 1[S > mean + k * std], statistics per channel of S [C, h, w] or over all of it."""
    flat = score.flatten(1) if scope == "per_channel" else score.flatten()[None]
    tau = flat.mean(dim=1) + k * flat.std(dim=1)  # unbiased std, as torch.std in the reference code
    tau = tau.view(-1, 1, 1) if scope == "per_channel" else tau.view(1, 1, 1)
    return (score > tau).float()


def subject_mask(score: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """One subject's mask [C, h, w] in [0, 1] from its score S [C, h, w], by `cfg.channel_rule`:
    per_channel (the paper: each channel its own mask), union (a cell kept in any channel is kept in
    all), sum (channel scores summed first, one threshold, the mask shared by every channel)."""
    score = score.float()
    channels = score.shape[0]
    if cfg.rule == "top_fraction":
        return top_cells(score.sum(dim=0), cfg.keep_fraction)[None].expand(channels, -1, -1).contiguous()
    if cfg.channel_rule == "sum":
        return channel_mask(score.sum(dim=0, keepdim=True), cfg).expand(channels, -1, -1).contiguous()
    mask = channel_mask(score, cfg)
    if cfg.channel_rule == "union":
        return mask.amax(dim=0, keepdim=True).expand(channels, -1, -1).contiguous()
    return mask


def top_cells(cells: torch.Tensor, fraction: float) -> torch.Tensor:
    """{0, 1} [h, w]: the round(fraction * h * w) cells of `cells` [h, w] with the highest scores (ties: the
    first in row-major order)."""
    flat = cells.flatten()
    keep = round(fraction * flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat)
    mask[order[:keep]] = 1.0
    return mask.view_as(cells)


def channel_mask(score: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """Blur, dilate, threshold each channel of S [C, h, w] (the paper's per-channel post-processing)."""
    iterations = cfg.dilation.reach(score.shape[-2])
    if cfg.box_sum_once:
        return threshold(box_sum(score), cfg.threshold_k, cfg.threshold_scope)
    if cfg.blur.enabled and cfg.blur.stage == "score":
        score = blur(score, cfg.blur.kernel, cfg.blur.sigma)
    if cfg.dilation.enabled and cfg.dilation.stage == "score":
        score = dilate(score, cfg.dilation.kernel, iterations)
    mask = threshold(score, cfg.threshold_k, cfg.threshold_scope)
    if cfg.dilation.enabled and cfg.dilation.stage == "mask":
        mask = dilate(mask, cfg.dilation.kernel, iterations)
    if cfg.blur.enabled and cfg.blur.stage == "mask":
        mask = blur(mask, cfg.blur.kernel, cfg.blur.sigma).clamp(0, 1)
    return mask


def union_mask(scores: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """Union over subjects: max_s M_s, for scores [G, C, h, w] -> [C, h, w]."""
    return torch.stack([subject_mask(s, cfg) for s in scores]).amax(dim=0)


def replace_background(z: torch.Tensor, z_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """z <- M * z + (1 - M) * z_ref (§2.2 step 7): elements with M = 0 come from the noised reference."""
    return mask * z + (1 - mask) * z_ref
