"""Exact, faster forms of the SAE's matmuls: what the gradient needs, and no more.

The hierarchical SAE's step is dominated by five dense (B x n_base)-sized matmuls and their
gradients. Three facts make most of that work unnecessary, without changing what is computed
(up to the order of floating-point sums):

* The decoder bias b_dec enters the encoder as (x - b_dec) W_enc1. Autograd would get its
  gradient through a (B x n_base) @ (n_base x d) product (the gradient of the centred input); it is
  -sum_rows(g) @ W_enc1^T, one vector-matrix product (`centred_encoder`).
* The base level is a ReLU: after warm-up only a few percent of z1 is nonzero (L0 60-170 of
  2048). Its decoder z1 W_dec1 and the concept encoder z1 W_enc2 then cost nnz(z1) rows each
  as gathered sums (`latent_matmul`, torch's embedding_bag), and their gradients likewise.
* TopK keeps k of the n_concept concept pre-activations per token: the gradient reaches W_enc2, b_enc2
  and z1 only through those k entries (`selected_preactivations`), k/n_concept of the dense work.
  W_enc2's gradient takes the cheapest of three forms: the selected entries' z1 rows (TopK's
  10 a token), z1's support (sparse z1), or one matmul over the columns that get any gradient
  (AuxK's entries over the dead latents, which fill those columns).

Sparse paths run in fp32 (they are bound by memory, not arithmetic); the dense ones run in the
autocast dtype when autocast is on, as before. Which path a batch takes depends only on its
own density (SPARSE_DENSITY_MAX), so a run is reproducible.

`kernel_mode("plain")` makes every function here plain autograd ops (the same values, autograd's
gradients); `kernel_mode("sparse")` takes the gathered paths at any density. A run's trainer
checks an edited forward_levels against plain autograd through both (sae_checks.py) and trains
on plain autograd where they disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F

DENSITY_SAMPLE_ROWS = 256
"""The density that picks the path is counted on this many rows (counting all of a dense batch
would cost as much as a tenth of the step)."""
DENSE_MATMUL_ADVANTAGE = 8
"""How many times more multiply-adds a second a dense matmul does than embedding_bag's gathered
rows (fp32, 1 thread; the measured rates are in docs/BENCHMARKS.md, "Figures behind the code's choices"): picks the form of
W's gradient in the selected pre-activations' backward."""
SPARSE_DENSITY_MAX = 0.1
"""z1 at most this dense takes the gathered path: where the gathered products stop being faster
than the dense ones (`bench/run_benchmarks.py --only kernels`; figures in docs/BENCHMARKS.md)."""


KERNEL_MODES = ("exact", "plain", "sparse")
_MODE = "exact"


@contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """Within the block: 'exact' (these kernels, the default), 'plain' (plain autograd ops) or
    'sparse' (these kernels on the gathered paths whatever the density; for checks)."""
    global _MODE
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode {mode!r} is not one of {KERNEL_MODES}")
    before, _MODE = _MODE, mode
    try:
        yield
    finally:
        _MODE = before


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


# --------------------------------------------------------------------------------------------
# The base encoder
# --------------------------------------------------------------------------------------------
class _CentredEncoder(torch.autograd.Function):
    """(x - b_dec) W + b, with b_dec's gradient as a vector-matrix product; x gets none."""

    @staticmethod
    def forward(ctx, x, b_dec, W, b, dtype):
        centred = x - b_dec
        if dtype is None:
            out = torch.addmm(b, centred, W)
        else:
            with torch.autocast(x.device.type, enabled=False):
                out = torch.addmm(b.to(dtype), centred.to(dtype), W.to(dtype))
        ctx.save_for_backward(centred, W)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        centred, W = ctx.saved_tensors
        grad_b = grad.sum(0, dtype=torch.float32)
        grad_b_dec = -(grad_b @ W.T)
        if ctx.dtype is None:
            grad_W = centred.T @ grad
        else:
            with torch.autocast(centred.device.type, enabled=False):
                grad_W = (centred.to(ctx.dtype).T @ grad.to(ctx.dtype)).float()
        return None, grad_b_dec, grad_W, grad_b, None


def centred_encoder(x: torch.Tensor, b_dec: torch.Tensor, W: torch.Tensor, b: torch.Tensor
                    ) -> torch.Tensor:
    """(x - b_dec) @ W + b for inputs x that need no gradient (training data).

    In the autocast dtype when autocast is on (as torch.addmm would be), else fp32."""
    if _MODE == "plain":
        return torch.addmm(b, x - b_dec, W)
    return _CentredEncoder.apply(x, b_dec, W, b, _autocast_dtype(x.device.type))


# --------------------------------------------------------------------------------------------
# Products with the ReLU latents
# --------------------------------------------------------------------------------------------
def _offsets(bags: torch.Tensor, n: int, counts: torch.Tensor | None = None) -> torch.Tensor:
    """embedding_bag's offsets for entries sorted by `bags` (each in [0, n)): n bags, some empty
    (`counts`: the bags' sizes, where the caller has them already)."""
    offsets = torch.zeros(n, dtype=torch.long, device=bags.device)
    offsets[1:] = (torch.bincount(bags, minlength=n) if counts is None else counts).cumsum(0)[:-1]
    return offsets


class ActiveLatents(NamedTuple):
    """The nonzero entries of a (B, n) latent matrix, as embedding_bag reads them."""

    rows: torch.Tensor
    cols: torch.Tensor
    offsets: torch.Tensor
    """Start of each row's entries in `cols` (B,)."""

    @classmethod
    def of(cls, z: torch.Tensor, density_max: float | None = None) -> ActiveLatents | None:
        """The support of z, or None when z is denser than `density_max` (SPARSE_DENSITY_MAX;
        dense products win), not on a CPU (on a GPU dense products are fast, and counting would
        wait for the device), or in kernel_mode('plain')."""
        if z.device.type != "cpu" or _MODE == "plain":
            return None
        density_max = SPARSE_DENSITY_MAX if density_max is None else density_max
        with torch.no_grad():
            sample = z[:DENSITY_SAMPLE_ROWS]
            if _MODE != "sparse" and torch.count_nonzero(sample).item() > density_max * sample.numel():
                return None
            rows, cols = z.nonzero(as_tuple=True)
        return cls(rows, cols, _offsets(rows, len(z)))


def latent_matmul(z: torch.Tensor, W: torch.Tensor, active: ActiveLatents | None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """z @ W (+ bias) for ReLU latents z, on z's support when `active` is given.

    On the support, the gradient reaches z only at its nonzero entries: for z = ReLU(pre) that is
    exactly the gradient of pre (the ReLU's derivative is 0 elsewhere); W's gradient is exact.
    """
    if active is None:
        return z @ W if bias is None else torch.addmm(bias, z, W)
    if not W.is_contiguous():  # embedding_bag on strided rows is far slower (docs/BENCHMARKS.md)
        W = W.contiguous()
    # in W's dtype: fp32 in training (autocast leaves embedding_bag alone), the model's dtype
    # when an eval casts the SAE to it (absorption)
    values = z[active.rows, active.cols].to(W.dtype)
    out = F.embedding_bag(active.cols, W, active.offsets, per_sample_weights=values, mode="sum")
    return out if bias is None else out + bias


# --------------------------------------------------------------------------------------------
# TopK's selected pre-activations
# --------------------------------------------------------------------------------------------
class _SelectedPreactivations(torch.autograd.Function):
    """pre[r, indices[r, j]] for pre = z W + b computed outside autograd; the backward sends the
    (B, k) gradient to z, W and b through the selected entries only."""

    @staticmethod
    def forward(ctx, z, W, b, pre, indices, active):
        ctx.save_for_backward(z, W, indices)
        ctx.n, ctx.active = W.shape[1], active
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx, grad):
        z, W, indices = ctx.saved_tensors
        grad = grad.float()
        flat, weights = indices.reshape(-1), grad.reshape(-1)
        grad_b = torch.zeros(ctx.n, dtype=torch.float32, device=grad.device).index_add_(0, flat, weights)
        grad_z = None
        if ctx.needs_input_grad[0]:  # AuxK reads z detached: no gradient to z
            grad_z = F.embedding_bag(indices, W.T.contiguous(), per_sample_weights=grad,
                                     mode="sum").to(z.dtype)
        tokens = torch.arange(len(z), device=z.device).repeat_interleave(indices.shape[1])
        if z.device.type == "cpu":
            # entries with a zero gradient (a non-positive value after the ReLU, a live latent's
            # AuxK entry) add nothing: on a CPU they are left out (asking is free there)
            keep = weights != 0
            flat, weights, tokens = flat[keep], weights[keep], tokens[keep]
        # grad_W = z^T G for the (B, n) gradient G that is zero outside the selected entries, by
        # the cheapest of three exact forms (cost in scattered multiply-adds)
        counts = torch.bincount(flat, minlength=ctx.n)
        if z.device.type == "cpu":  # the columns that get any gradient
            columns = counts > 0
            n_columns = int(columns.sum())
        else:  # counting them would wait for the device: every column
            columns, n_columns = torch.ones_like(counts, dtype=torch.bool), ctx.n
        costs = {"entries": len(flat) * z.shape[1],
                 "columns": len(z) * z.shape[1] * n_columns / DENSE_MATMUL_ADVANTAGE}
        if ctx.active is not None:
            costs["support"] = len(ctx.active.rows) * ctx.n
        form = min(costs, key=costs.get)
        if form == "columns":
            # one matmul over the columns that get any gradient (AuxK's dead latents: every
            # token selects most of them, so the (B, columns) block is dense)
            position = columns.cumsum(0) - 1
            G = torch.zeros(len(z), n_columns, dtype=torch.float32, device=z.device)
            G[tokens, position[flat]] = weights  # a row's indices are distinct (TopK)
            grad_W = torch.zeros(z.shape[1], ctx.n, dtype=torch.float32, device=z.device)
            grad_W[:, columns] = z.float().T @ G
        elif form == "support":
            # by z's nonzero entries, each reading a row of G (sparse z)
            active = ctx.active
            G = torch.zeros(len(z), ctx.n, dtype=torch.float32, device=z.device)
            G[tokens, flat] = weights
            order = torch.argsort(active.cols, stable=True)
            grad_W = F.embedding_bag(active.rows[order], G, _offsets(active.cols, z.shape[1]),
                                     per_sample_weights=z[active.rows, active.cols][order].float(),
                                     mode="sum")
        else:
            # grad_W[:, c] = sum over (r, j) with indices[r, j] = c of grad[r, j] * z[r]
            order = torch.argsort(flat, stable=True)
            grad_W = F.embedding_bag(tokens[order], z.float(), _offsets(flat, ctx.n, counts),
                                     per_sample_weights=weights[order], mode="sum").T
        return grad_z, grad_W, grad_b, None, None, None


def selected_preactivations(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor, pre: torch.Tensor,
                            indices: torch.Tensor, active: ActiveLatents | None = None) -> torch.Tensor:
    """The entries `indices` (B, k) of pre = z @ W + b, differentiable in z, W and b at the cost
    of k entries per row. `pre` must be z @ W + b computed without autograd (no_grad); `active`,
    z's support where it is sparse, lets W's gradient read z's nonzero entries instead."""
    if _MODE == "plain":
        return torch.addmm(b, z, W).gather(1, indices)
    return _SelectedPreactivations.apply(z, W, b, pre.detach(), indices, active)
