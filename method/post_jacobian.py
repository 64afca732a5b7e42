"""Jacobian rows of the UNet's output head eps = conv_out(act(GroupNorm(u))), in closed form.

GroupNorm couples all positions, but only through two statistics per group, so its Jacobian is
"diagonal minus rank two" per group (x = (u - mu_g) / sigma_g, n_g = elements of group g):

    d a[c2, q] / d u[c, q'] = (gamma_c2 / sigma_g) (delta_{c c2} delta_{q q'} - 1 / n_g - x[c2, q] x[c, q'] / n_g)

With P = act'(a) * gamma / sigma and K the (local, k x k) convolution, the row of output m is

    d eps[m] / d u[c, q'] = K[m, (c, q')] P[c, q'] - alpha_g[m] - x[c, q'] alpha'_g[m]
    alpha_g = conv(P * 1_g) / n_g,  alpha'_g = conv(P * x * 1_g) / n_g        (bias-free convolutions)

so its product with tangent fields D_x[c, q'] (one per head and token) is a k x k local term plus
2G rank-one terms: no M x N x C' Jacobian is ever formed. Exact; `check_rows` compares rows with
autograd before the result is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedHead(Exception):
    """The output head is not GroupNorm -> elementwise activation -> stride-1 'same' convolution."""


@dataclass
class PostLinearization:
    """The output head linearised at u (channel-first [C', h, w])."""

    weight: torch.Tensor  # conv kernel W [C_out, C', k, k]
    p: torch.Tensor  # act'(a) * gamma / sigma  [C', h, w] (ones without a norm)
    xhat: torch.Tensor  # normalised input [C', h, w] (zeros without a norm)
    alpha: torch.Tensor  # [M, 2G]: alpha_g then alpha'_g, M = C_out * h * w
    groups: int


def linearize_head(
    norm: nn.Module | None, act: nn.Module | None, conv: nn.Module, u: torch.Tensor
) -> PostLinearization:
    """Linearise conv(act(norm(u))) at u [C', h, w]."""
    check_head(norm, conv)
    channels = u.shape[0]
    if norm is None:
        ones, zeros = torch.ones_like(u), torch.zeros_like(u)
        no_terms = torch.zeros(conv.out_channels * u[0].numel(), 0, dtype=u.dtype, device=u.device)
        return PostLinearization(conv.weight, ones, zeros, no_terms, 0)
    groups = norm.num_groups
    grouped = u.reshape(groups, -1)  # [G, n_g]
    mean = grouped.mean(dim=1, keepdim=True)
    sigma = (grouped.var(dim=1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    xhat = ((grouped - mean) / sigma).reshape_as(u)
    gamma = norm.weight if norm.affine else torch.ones(channels, dtype=u.dtype, device=u.device)
    beta = norm.bias if norm.affine else torch.zeros(channels, dtype=u.dtype, device=u.device)
    a = gamma[:, None, None] * xhat + beta[:, None, None]
    slope = torch.func.jvp(act, (a,), (torch.ones_like(a),))[1] if act is not None else torch.ones_like(a)
    sigma_c = sigma.repeat_interleave(channels // groups, dim=0).view(channels, 1, 1)
    p = slope * gamma[:, None, None] / sigma_c
    in_group = torch.eye(groups, dtype=u.dtype, device=u.device).repeat_interleave(channels // groups, dim=1)  # [G, C']
    fields = torch.cat([p[None] * in_group[..., None, None], (p * xhat)[None] * in_group[..., None, None]])
    n_g = grouped.shape[1]
    alpha = F.conv2d(fields, conv.weight, padding=conv.padding) / n_g  # [2G, C_out, h, w]
    return PostLinearization(conv.weight, p, xhat, alpha.flatten(1).T.contiguous(), groups)


def check_head(norm: nn.Module | None, conv: nn.Module) -> None:
    if norm is not None and not isinstance(norm, nn.GroupNorm):
        raise UnsupportedHead(f"conv_norm_out is {type(norm).__name__}, not GroupNorm")
    if not isinstance(conv, nn.Conv2d):
        raise UnsupportedHead(f"conv_out is {type(conv).__name__}, not Conv2d")
    kh, kw = conv.kernel_size
    same = kh == kw and kh % 2 == 1 and tuple(conv.padding) == (kh // 2, kw // 2)
    plain = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
    if not (same and plain):
        raise UnsupportedHead(f"conv_out {conv} is not a square, stride-1 'same' convolution")


class HeadProducts:
    """Rows of (d eps / d u) contracted with tangent fields d [X, C', N], for chunks of outputs m."""

    def __init__(self, lin: PostLinearization, d: torch.Tensor):
        self.lin, self.fields, self.channels, self.n = lin, *d.shape
        c_out, _, self.kernel, _ = lin.weight.shape
        self.height, self.width = lin.p.shape[1:]
        if lin.groups:  # sums of d and x * d over each group's channels [2G, X*N]
            per_group = lambda v: v.view(self.fields, lin.groups, -1, self.n).sum(dim=2)  # noqa: E731  [X, G, N]
            xd = lin.xhat.reshape(1, self.channels, self.n) * d
            beta = torch.cat([per_group(d), per_group(xd)], dim=1)  # [X, 2G, N]
            self.beta = beta.permute(1, 0, 2).reshape(2 * lin.groups, -1)
        e = lin.p.reshape(1, self.channels, self.n) * d  # [X, C', N]
        # sum_c W[o, c, di, dj] e[x, c, q] for every kernel offset: [k*k, C_out, N, X]
        self.local = torch.einsum("ocab,xcq->aboqx", lin.weight, e).reshape(-1, c_out, self.n, self.fields)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """sum_c (d eps[m] / d u[c, q]) d[x, c, q] for m in [start, stop): [k, N, X]."""
        k, n, fields, lin = stop - start, self.n, self.fields, self.lin
        # 1. The 2G rank-one terms (GroupNorm's mean and variance), dense over q.
        if lin.groups:
            out = -(lin.alpha[start:stop] @ self.beta).view(k, fields, n).permute(0, 2, 1).contiguous()
        else:
            out = torch.zeros(k, n, fields, dtype=self.local.dtype, device=self.local.device)
        # 2. The local k x k term: output m = (o, i, j) sees q = (i + di - pad, j + dj - pad).
        m = torch.arange(start, stop, device=out.device)
        o, i, j = m // (self.height * self.width), (m // self.width) % self.height, m % self.width
        flat, pad = out.view(-1, fields), self.kernel // 2
        for offset, local in enumerate(self.local):
            qi, qj = i + offset // self.kernel - pad, j + offset % self.kernel - pad
            valid = (qi >= 0) & (qi < self.height) & (qj >= 0) & (qj < self.width)
            q = qi[valid] * self.width + qj[valid]
            flat.index_add_(0, (m[valid] - start) * n + q, local[o[valid], q])
        return out
