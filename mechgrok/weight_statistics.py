"""Hu et al.'s statistics of a transformer's weight matrices (Latent State Models of Training
Dynamics, 2023): norms, trace, spectrum and sparsity of every attention and MLP matrix, and
the distribution of the weights and MLP biases. Pure functions of the parameters; the
training maps (``latent.py``) and the built-in ``weight_statistics`` measure use them."""

from __future__ import annotations

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

STATISTICS = ("l1", "l2", "trace", "spectral", "code_sparsity", "computational_sparsity",
              "mean_lambda", "variance_lambda", "mean_w", "median_w", "var_w", "mean_b", "median_b",
              "var_b")
MATRIX_STATISTICS = STATISTICS[:8]
SV_ZERO = 1e-5  # singular values below this count as 0 (Hu et al.)


def matrix_statistics(W: Float[Tensor, "*batch rows cols"]) -> dict[str, Float[Tensor, "*batch"]]:
    """The 8 per-matrix statistics of Hu et al. for every matrix of a batch.

    l1, l2: norms of the flattened matrix; trace: sum of the main diagonal, which for a
    non-square ``rows x cols`` matrix has min(rows, cols) entries (what ``torch.trace`` -- and
    Hu et al.'s code -- computes; the matrices here are all non-square but W_O's); spectral:
    the largest singular value; code_sparsity = l1 / l2; computational_sparsity = trace /
    spectral; mean_lambda, variance_lambda: mean and variance (unbiased, n - 1) of the
    min(rows, cols) singular values after setting those below 1e-5 to 0.
    """
    l1 = W.abs().sum((-2, -1))
    l2 = W.square().sum((-2, -1)).sqrt()
    trace = W.diagonal(dim1=-2, dim2=-1).sum(-1)
    sv = torch.linalg.svdvals(W)
    spectral = sv[..., 0]  # svdvals are sorted, largest first
    sv = torch.where(sv < SV_ZERO, torch.zeros_like(sv), sv)
    return {"l1": l1, "l2": l2, "trace": trace, "spectral": spectral, "code_sparsity": l1 / l2,
            "computational_sparsity": trace / spectral, "mean_lambda": sv.mean(-1),
            "variance_lambda": sv.var(-1)}


def block_matrices(params: dict[str, Tensor], n_layers: int) -> list[Tensor]:
    """The matrices the statistics are taken over, each with a leading checkpoint axis:
    per layer, W_Q, W_K, W_V of every head (``d_model x d_head``), W_O as one
    ``(n_heads*d_head) x d_model`` matrix, W_in and W_out. Embeddings, unembedding and
    LayerNorm weights are not included. Matrices of one shape come as one stacked tensor
    ``[checkpoint, n_matrices, rows, cols]``."""
    out = []
    for layer in range(n_layers):
        b = f"blocks.{layer}"
        qkv = torch.cat([params[f"{b}.attn.W_{x}"] for x in "QKV"], dim=1)  # [t, 3h, d, k]
        out.append(qkv)
        out.append(einops.rearrange(params[f"{b}.attn.W_O"], "t h k d -> t 1 (h k) d"))
        out.append(params[f"{b}.mlp.W_in"][:, None])
        out.append(params[f"{b}.mlp.W_out"][:, None])
    return out


def _distribution(x: Float[Tensor, "t n"], suffix: str) -> dict[str, Tensor]:
    # median: the usual midpoint median (torch.quantile), not torch.median's lower middle value.
    return {f"mean_{suffix}": x.mean(-1), f"median_{suffix}": torch.quantile(x, 0.5, dim=-1),
            f"var_{suffix}": x.var(-1)}


def weight_statistics(params: dict[str, Tensor], n_layers: int) -> pd.DataFrame:
    """The 14 statistics for stacked params (every tensor with a leading checkpoint axis).

    The 8 matrix statistics are computed per matrix (``matrix_statistics``) and averaged over
    all the matrices of ``block_matrices`` (each head's W_Q counts as one matrix, W_O as one).
    mean_w, median_w, var_w: over the entries of those matrices concatenated; mean_b,
    median_b, var_b: over the MLP biases b_in and b_out of every layer concatenated.
    Computed in float64.
    """
    params = {k: v.double() for k, v in params.items()}
    mats = block_matrices(params, n_layers)
    per_matrix = [matrix_statistics(m) for m in mats]  # each value: [t, n_matrices]
    cols = {s: torch.cat([pm[s] for pm in per_matrix], dim=1).mean(1) for s in MATRIX_STATISTICS}
    weights = torch.cat([m.flatten(1) for m in mats], dim=1)
    biases = torch.cat([params[f"blocks.{layer}.mlp.b_{x}"] for layer in range(n_layers) for x in ("in", "out")],
                       dim=1)
    cols |= _distribution(weights, "w") | _distribution(biases, "b")
    return pd.DataFrame({s: cols[s].numpy() for s in STATISTICS})


