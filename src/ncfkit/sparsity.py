"""Sparsity of feed-forward weights: zero-preserving subsets (Definition 15, Lemma 16),
the balance of a KKT point (Lemma 17), and exact zero preservation (Theorem 18).

For hidden layer l (1 ≤ l ≤ L−1) neuron j owns its incoming weights W_l[j, :] and its
outgoing weights W_{l+1}[:, j]. A set of neurons whose incoming AND outgoing weights are
all zero is a zero-preserving subset w_z: gradient flow and gradient descent started with
w_z = 0 keep it exactly 0 (Lemma 16). For a KKT point the neurons with zero row and
column form one (proof of Theorem 18).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import MLP

__all__ = ["NeuronActivity", "neuron_activity", "zero_preserving_mask", "balance_error"]


@dataclass(frozen=True)
class NeuronActivity:
    """Per hidden layer: which neurons are zero (row and column small), which active,
    and which are lopsided (row small but column not, or the reverse)."""

    widths: tuple[int, ...]
    zero: tuple[tuple[int, ...], ...]
    active: tuple[tuple[int, ...], ...]
    lopsided: tuple[tuple[int, ...], ...]
    threshold: float

    @property
    def active_per_layer(self) -> list[int]:
        return [len(a) for a in self.active]


def neuron_activity(arch: MLP, w: torch.Tensor, tol: float = 1e-3) -> NeuronActivity:
    """Classify hidden neurons of one weight vector ``w`` (k,).

    A row or column counts as zero when its norm is at most ``tol`` times the largest
    neuron norm sqrt(‖row‖² + ‖col‖²) in the whole network.
    """
    norms = arch.neuron_norms(w)
    scale = max((torch.sqrt(r**2 + c**2).max().item() for r, c in norms), default=0.0)
    threshold = tol * scale
    zero, active, lopsided = [], [], []
    for rows, cols in norms:
        r_small, c_small = rows <= threshold, cols <= threshold
        zero.append(tuple(torch.nonzero(r_small & c_small).flatten().tolist()))
        active.append(tuple(torch.nonzero(~r_small & ~c_small).flatten().tolist()))
        lopsided.append(tuple(torch.nonzero(r_small ^ c_small).flatten().tolist()))
    return NeuronActivity(tuple(arch.hidden), tuple(zero), tuple(active), tuple(lopsided), threshold)


def zero_preserving_mask(arch: MLP, zero: tuple[tuple[int, ...], ...], *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Flat boolean mask (k,) of w_z: incoming and outgoing weights of the ``zero`` neurons."""
    flat = torch.zeros(arch.num_params, dtype=torch.bool,
                       device=None if like is None else like.device)
    Ms = arch.split(flat)
    for l, neurons in enumerate(zero):
        idx = list(neurons)
        Ms[l][idx, :] = True
        Ms[l + 1][:, idx] = True
    return flat


def balance_error(arch: MLP, w: torch.Tensor) -> float:
    """Lemma 17: max over hidden neurons of |‖W_l[j,:]‖² − p‖W_{l+1}[:,j]‖²| / ‖w‖²
    (0 at an exact KKT point of the constrained NCF)."""
    p = arch.act.p if arch.act.homogeneous else 1.0
    errs = [(r**2 - p * c**2).abs().max() for r, c in arch.neuron_norms(w)]
    if not errs:
        return 0.0
    return (torch.stack(errs).max() / (w**2).sum()).item()
