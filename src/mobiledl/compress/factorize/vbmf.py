"""Rank estimation by empirical variational Bayesian matrix factorization (EVBMF).

Nakajima, Sugiyama, Babacan and Tomioka, "Global Analytic Solution of Fully-observed
Variational Bayesian Matrix Factorization" (JMLR 2013), show that the VB posterior of a
low-rank model ``Y = B A^T + E`` with Gaussian noise of variance ``sigma^2`` keeps a
singular component of ``Y`` exactly when its singular value exceeds

    gamma_EVB = sigma * sqrt(M * (1 + tau) * (1 + alpha / tau)),     alpha = L / M <= 1,

where ``tau`` solves ``tau = log(1 + tau) + alpha * log(1 + tau / alpha)`` (about
``2.5129 * sqrt(alpha)``). With the prior variances estimated too (empirical VB), the
noise variance is the minimizer of the closed-form free energy of their Theorem 13,
bounded as in their Sec. 4. Kim et al. 2016 ("Compression of Deep Convolutional Neural
Networks for Fast and Low Power Mobile Applications") use this rank on the two channel
unfoldings of a kernel to pick Tucker-2 ranks without any tuning.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from threadpoolctl import threadpool_limits


def evbmf_rank(matrix: torch.Tensor) -> int:
    """The number of singular components EVBMF keeps for ``matrix`` (0 if it is all noise)."""
    y = matrix.detach().double().cpu().numpy()
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    if rows < 2:
        return rows
    with threadpool_limits(1, user_api="blas"):
        singular = np.linalg.svd(y, compute_uv=False)
    sigma2 = noise_variance(singular, rows, cols)
    return int(np.sum(singular > evb_threshold(sigma2, rows, cols)))


def tau_bar(alpha: float) -> float:
    """The zero of ``log(1 + t) + alpha * log(1 + t / alpha) - t`` for ``t > 0``."""

    def crossing(t: float) -> float:
        return math.log1p(t) + alpha * math.log1p(t / alpha) - t

    return brentq(crossing, 1e-6, 100.0)


def evb_threshold(sigma2: float, rows: int, cols: int) -> float:
    """Singular values above this survive EVBMF (rows <= cols)."""
    alpha = rows / cols
    tau = tau_bar(alpha)
    return math.sqrt(cols * sigma2 * (1 + tau) * (1 + alpha / tau))


def noise_variance(singular: np.ndarray, rows: int, cols: int) -> float:
    """The EVB estimate of the noise variance: the free energy's minimizer within its bounds."""
    alpha = rows / cols
    tau = tau_bar(alpha)
    x_bar = (1 + tau) * (1 + alpha / tau)
    squares = singular**2
    upper = squares.sum() / (rows * cols)
    # At most this many components can be signal (Nakajima et al. 2013, Sec. 4).
    max_rank = min(math.ceil(rows / (1 + alpha)) - 1, len(singular)) - 1
    max_rank = max(max_rank, 0)
    tail = squares[max_rank + 1 :] if max_rank + 1 < len(squares) else squares[-1:]
    lower = max(tail[0] / (cols * x_bar), tail.mean() / cols)
    if not 0 < lower < upper:
        return float(upper)

    def free_energy(sigma2: float) -> float:
        return _free_energy(sigma2, squares, rows, cols, x_bar)

    found = minimize_scalar(free_energy, bounds=(lower, upper), method="bounded")
    return float(found.x)


def _free_energy(sigma2: float, squares: np.ndarray, rows: int, cols: int, x_bar: float) -> float:
    """The EVB free energy (up to constants) as a function of the noise variance.

    ``squares`` holds all ``rows`` squared singular values, so no residual term remains.
    """
    alpha = rows / cols
    x = np.maximum(squares / (cols * sigma2), 1e-300)
    signal, noise = x[x > x_bar], x[x <= x_bar]
    tau = 0.5 * (signal - (1 + alpha) + np.sqrt((signal - (1 + alpha)) ** 2 - 4 * alpha))
    energy = np.sum(noise - np.log(noise))
    energy += np.sum(signal - tau) + np.sum(np.log((tau + 1) / signal))
    energy += alpha * np.sum(np.log(tau / alpha + 1))
    return float(energy)
