"""Weights of a factorized layer from the original weight (data-free decompositions).

- ``svd``: truncated SVD of the weight matrix (Denton et al. 2014), the square roots of the
  singular values split between the two factors so both are equally scaled for fine-tuning.
- ``spatial``: the closed-form optimum of Jaderberg et al.'s scheme 2 (Tai et al. 2016,
  "Convolutional Neural Networks with Low-rank Regularization", Theorem 1): the truncated
  SVD of ``W`` rearranged as a ``(C_in * kh) x (C_out * kw)`` matrix.
- ``tucker2``: Tucker-2 decomposition along the two channel modes by higher-order orthogonal
  iteration (``tensorly.decomposition.partial_tucker``), as Kim et al. 2016.
- ``cp``: rank-R CP decomposition of the 4-way kernel by alternating least squares
  (``tensorly.decomposition.parafac``; Lebedev et al. 2015 used non-linear least squares),
  the component scales spread evenly over the four factors.

Data-aware (``bases`` given, ``svd`` and ``tucker2``): the channel factors are the top
eigenvectors of the layer's response / input second moments (``statistics.py``, Zhang et al.
2016) and the remaining factor is the weight projected onto them: ``P^T W`` for ``svd``,
``W x_0 U_out^T x_1 U_in^T`` for ``tucker2``.

tensorly runs on NumPy with one BLAS thread: NumPy's OpenBLAS threads and PyTorch's OpenMP
threads in one process contend so badly that CP-ALS ran ~70x slower with both.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from mobiledl.compress.factorize.layers import Factorized, LayerSpec


@torch.no_grad()
def decompose(
    layer: nn.Conv2d | nn.Linear,
    spec: LayerSpec,
    iterations: int = 50,
    bases: list[Tensor] | None = None,
) -> Factorized:
    """A :class:`Factorized` chain approximating ``layer`` as ``spec`` says.

    ``bases``: per channel mode (output, then input for Tucker-2), orthonormal directions
    sorted by importance, for the data-aware ``svd`` / ``tucker2``.
    """
    weight = layer.weight.detach().double().cpu()
    if bases is not None:
        factors = _projected(weight, spec, [b.double().cpu() for b in bases])
    else:
        factors = _FACTORS[spec.method](weight, spec, iterations)
    factorized = Factorized(spec)
    weighted = [m for m in factorized if isinstance(m, nn.Conv2d | nn.Linear)]
    for module, value in zip(weighted, factors, strict=True):
        module.weight.copy_(value.reshape(module.weight.shape))
    if layer.bias is not None:
        weighted[-1].bias.copy_(layer.bias.detach())
    return factorized.to(layer.weight.device, layer.weight.dtype)


def _svd(weight: Tensor, spec: LayerSpec, iterations: int) -> list[Tensor]:
    """``W (out x rest) ~ (U sqrt(S)) (sqrt(S) V^T)``: the rest-side factor first."""
    del iterations
    (rank,) = spec.ranks
    u, s, vh = torch.linalg.svd(weight.reshape(weight.shape[0], -1), full_matrices=False)
    root = s[:rank].sqrt()
    return [root[:, None] * vh[:rank], u[:, :rank] * root]


def _spatial(weight: Tensor, spec: LayerSpec, iterations: int) -> list[Tensor]:
    """Vertical ``(r, C_in, kh, 1)`` and horizontal ``(C_out, r, 1, kw)`` filters."""
    del iterations
    (rank,) = spec.ranks
    c_out, c_in, kh, kw = weight.shape
    matrix = weight.permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    vertical = (u[:, :rank] * root).T.reshape(rank, c_in, kh, 1)
    horizontal = (root[:, None] * vh[:rank]).reshape(rank, c_out, kw).permute(1, 0, 2)
    return [vertical, horizontal.reshape(c_out, rank, 1, kw)]


def _tucker2(weight: Tensor, spec: LayerSpec, iterations: int) -> list[Tensor]:
    """``W ~ core x_0 U_out x_1 U_in``; a mode at full rank is not decomposed."""
    r_out, r_in = spec.ranks
    full = (spec.out_channels, spec.in_channels)
    modes = [mode for mode, rank in enumerate((r_out, r_in)) if rank < full[mode]]
    ranks = [(r_out, r_in)[mode] for mode in modes]
    with _numpy_backend():
        (core, factors), _ = partial_tucker(
            weight.numpy(),
            rank=ranks,
            modes=modes,
            n_iter_max=iterations,
            init="svd",
            random_state=0,
        )
    by_mode = dict(zip(modes, (torch.from_numpy(np.asarray(f)) for f in factors), strict=True))
    result = []
    if 1 in by_mode:
        result.append(by_mode[1].T)
    result.append(torch.from_numpy(np.asarray(core)))
    if 0 in by_mode:
        result.append(by_mode[0])
    return result


def _cp(weight: Tensor, spec: LayerSpec, iterations: int) -> list[Tensor]:
    """``W ~ sum_r a_out[r] o a_in[r] o a_y[r] o a_x[r]`` as 1x1, dw kh x 1, dw 1 x kw, 1x1."""
    (rank,) = spec.ranks
    with _numpy_backend():
        cp = parafac(
            weight.numpy(),
            rank=rank,
            n_iter_max=iterations,
            init="svd",
            random_state=0,
            normalize_factors=True,
        )
    weights = torch.from_numpy(np.asarray(cp.weights))
    factors = [torch.from_numpy(np.asarray(f)) for f in cp.factors]
    share = weights.abs().clamp(min=1e-30) ** 0.25
    a_out, a_in, a_y, a_x = (f * share for f in factors)
    a_out = a_out * torch.sign(weights)
    return [a_in.T, a_y.T, a_x.T, a_out]


def _projected(weight: Tensor, spec: LayerSpec, bases: list[Tensor]) -> list[Tensor]:
    """Factors from given channel directions: ``[P^T W, P]`` or Tucker-2's three."""
    p_out = bases[0][:, : spec.ranks[0]]
    if spec.method == "svd":
        return [p_out.T @ weight.flatten(1), p_out]
    r_out, r_in = spec.ranks
    result = []
    core = weight
    if r_in < spec.in_channels:
        p_in = bases[1][:, :r_in]
        core = torch.einsum("oihw,ib->obhw", core, p_in)
        result.append(p_in.T)
    if r_out < spec.out_channels:
        core = torch.einsum("oihw,oa->aihw", core, p_out)
    result.append(core)
    if r_out < spec.out_channels:
        result.append(p_out)
    return result


@contextlib.contextmanager
def _numpy_backend() -> Iterator[None]:
    """tensorly on NumPy, one BLAS thread, without its rank-clipping warnings."""
    with (
        tl.backend_context("numpy"),
        threadpool_limits(1, user_api="blas"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)
        yield


_FACTORS = {"svd": _svd, "spatial": _spatial, "tucker2": _tucker2, "cp": _cp}
