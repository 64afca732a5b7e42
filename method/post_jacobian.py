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

from collections.abc import Callable
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
    alpha = group_convolutions(torch.stack([p, p * xhat]), conv, groups) / grouped.shape[1]  # [2, G, C_out, h, w]
    return PostLinearization(conv.weight, p, xhat, alpha.flatten(2).flatten(0, 1).T.contiguous(), groups)


def group_convolutions(fields: torch.Tensor, conv: nn.Conv2d, groups: int) -> torch.Tensor:
    """conv (no bias) of each field [F, C', h, w] restricted to each channel group: [F, G, C_out, h, w].

    One grouped convolution: output block g sees only the input channels of group g.
    """
    c_out, channels, k, _ = conv.weight.shape
    weight = conv.weight.view(c_out, groups, channels // groups, k, k).transpose(0, 1).flatten(0, 1)
    out = F.conv2d(fields, weight, padding=conv.padding, groups=groups)  # [F, G*C_out, h, w]
    return out.view(len(fields), groups, c_out, *fields.shape[2:])


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
    """Rows of (d eps / d u) contracted with tangent fields d [X, N, C'], for chunks of outputs m.

    Row m as [N, X] (x = one tangent field) is -alpha[m] @ beta (dense, rank 2G) plus a local k x k
    term; `contract` builds rows a tile at a time into one reused buffer and reduces each tile at once.
    """

    def __init__(self, lin: PostLinearization, d: torch.Tensor):
        self.lin, (self.fields, self.n, self.channels) = lin, d.shape
        c_out, _, self.kernel, _ = lin.weight.shape
        self.height, self.width = lin.p.shape[1:]
        if lin.groups:  # minus the sums of d and x * d over each group's channels [2G, N*X]
            per_group = lambda v: v.view(self.fields, self.n, lin.groups, -1).sum(dim=3)  # noqa: E731  [X, N, G]
            xd = lin.xhat.reshape(self.channels, self.n).T * d
            beta = torch.cat([per_group(d), per_group(xd)], dim=2)  # [X, N, 2G]
            self.beta = beta.permute(2, 1, 0).reshape(2 * lin.groups, -1).neg()
        e = lin.p.reshape(self.channels, self.n).T * d  # [X, N, C']
        # sum_c W[o, c, di, dj] e[x, q, c] for every kernel offset: [k*k, C_out, N, X]
        self.local = torch.einsum("ocab,xqc->aboqx", lin.weight, e).reshape(-1, c_out, self.n, self.fields)

    def rows(self, start: int, stop: int, mix: torch.Tensor | None = None) -> torch.Tensor:
        """(mix @) sum_c (d eps[m] / d u[c, q]) d[x, c, q] for m in [start, stop): [k, N, X]."""
        return self.contract(start, stop, torch.clone, mix, tile=stop - start)

    def contract(
        self,
        start: int,
        stop: int,
        reduce: Callable[[torch.Tensor], torch.Tensor],
        mix: torch.Tensor | None = None,
        scale: float = 1.0,
        tile: int = 64,
    ) -> torch.Tensor:
        """reduce(scale * rows) for the rows of outputs start..stop-1, optionally mixed first, tile by tile.

        mix [k, k] replaces row r by sum_j mix[r, j] row_j (the dense part through alpha, the local
        part over mix's nonzeros). `reduce` gets a [t, N, X] buffer it may overwrite; results are
        concatenated along the first dimension.
        """
        k = stop - start
        alpha = self.lin.alpha[start:stop] * scale  # [k, 2G]
        if mix is None:
            r = j = torch.arange(k, device=alpha.device)
            coef = torch.full((k,), scale, dtype=alpha.dtype, device=alpha.device)
        else:
            alpha = mix @ alpha
            r, j = mix.nonzero(as_tuple=True)  # sorted by r
            coef = mix[r, j] * scale
        buffer = torch.empty(min(tile, k), self.n, self.fields, dtype=alpha.dtype, device=alpha.device)
        bounds = torch.searchsorted(r, torch.arange(0, k + tile, tile, device=r.device)).tolist()
        out = []
        for t, lo, hi in zip(range(0, k, tile), bounds, bounds[1:], strict=False):
            rows = buffer[: min(tile, k - t)]
            self.dense(alpha[t : t + len(rows)], rows)
            self.add_local(rows, r[lo:hi] - t, start + j[lo:hi], coef[lo:hi])
            out.append(reduce(rows))
        return torch.cat(out)

    def dense(self, alpha: torch.Tensor, rows: torch.Tensor) -> None:
        """rows [t, N, X] = the 2G rank-one terms (GroupNorm's mean and variance) of alpha [t, 2G]."""
        if self.lin.groups:
            torch.mm(alpha, self.beta, out=rows.view(len(rows), -1))
        else:
            rows.zero_()

    def add_local(self, rows: torch.Tensor, r: torch.Tensor, m: torch.Tensor, coef: torch.Tensor) -> None:
        """rows[r] += coef * (local k x k term of output m), for pairs (r, m, coef) [P] each."""
        o, i, j = m // (self.height * self.width), (m // self.width) % self.height, m % self.width
        pad = self.kernel // 2
        offset = torch.arange(self.kernel**2, device=m.device)[:, None]  # [k*k, 1]: output (o, i, j) sees
        qi, qj = i + offset // self.kernel - pad, j + offset % self.kernel - pad  # q = (i + di - pad, j + dj - pad)
        valid = (qi >= 0) & (qi < self.height) & (qj >= 0) & (qj < self.width)  # [k*k, P]
        offset, pair = valid.nonzero(as_tuple=True)
        q = qi[offset, pair] * self.width + qj[offset, pair]
        values = self.local[offset, o[pair], q] * coef[pair, None]  # [V, X]
        rows.view(-1, self.fields).index_add_(0, r[pair] * self.n + q, values)
