"""The energy model E(h) -> scalar, its InfoNCE loss, and its input gradient in closed form.

E is a small MLP on the normalised residual stream, with SiLU activations so that the input
gradient is smooth and informative everywhere. Steering needs dE/dh inside `generate`, which runs
under inference mode; rather than rebuilding an autograd graph per step, `energy_and_grad` does
the MLP's backward pass by hand (three matmuls), in float32 whatever the model's dtype.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def default_widths(hidden_size: int) -> tuple[int, int]:
    """Hidden widths scaled to the LLM: about H/2 and H/4, rounded to 64, within [128, 1024]."""
    w1 = int(min(1024, max(128, round(hidden_size / 2 / 64) * 64)))
    return w1, max(64, w1 // 2)


class EnergyMLP(nn.Module):
    """E(h) = w3 · silu(W2 silu(W1 (h - mean) / std + b1) + b2) + b3.

    No dropout: the model behaves the same in training and steering, and its gradient is the one
    that was trained."""

    def __init__(self, hidden_size: int, widths: tuple[int, ...] | None = None):
        super().__init__()
        widths = tuple(widths or default_widths(hidden_size))
        dims = (hidden_size, *widths, 1)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))

    @property
    def hidden_size(self) -> int:
        return self.linears[0].in_features

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(lin.out_features for lin in self.linears[:-1])

    def set_input_stats(self, x: Tensor, eps: float = 1e-4) -> None:
        """Normalise inputs by training-set statistics (residual streams have a few huge dimensions)."""
        x = x.float()
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(eps))

    def forward(self, h: Tensor) -> Tensor:
        """Energy of each state: [..., H] -> [...] in float32."""
        x = (h.float() - self.mean) / self.std
        for lin in self.linears[:-1]:
            x = F.silu(lin(x))
        return self.linears[-1](x).squeeze(-1)

    def energy_and_grad(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """E(h) and dE/dh for a batch of states [N, H], by the hand-written backward of FrozenEnergy.

        Works under torch.inference_mode and needs no autograd graph; float32 throughout."""
        return FrozenEnergy(self).energy_and_grad(h)


class FrozenEnergy(nn.Module):
    """An EnergyMLP prepared for the steering hot path: normalisation folded into the first layer
    (W1' = W1 / std, b1' = b1 - W1' mean), fused SiLU backward, no autograd. Same function, fewer kernels."""

    def __init__(self, mlp: EnergyMLP):
        super().__init__()
        ws = [lin.weight.detach().float().clone() for lin in mlp.linears]
        bs = [lin.bias.detach().float().clone() for lin in mlp.linears]
        ws[0] = ws[0] / mlp.std.float()
        bs[0] = bs[0] - ws[0] @ mlp.mean.float()
        self.weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in ws)
        self.biases = nn.ParameterList(nn.Parameter(b, requires_grad=False) for b in bs)
        self.gram = _gram(ws[0])

    def forward(self, h: Tensor) -> Tensor:
        return self.energy_and_grad(h, need_grad=False)[0]

    def energy_and_grad(self, h: Tensor, *, need_energy: bool = True, need_grad: bool = True) -> tuple[Tensor, Tensor]:
        """E(h) [N] (zeros if not needed) and dE/dh [N, H] (empty if not needed), float32."""
        x, pre = mlp_hidden(h, self.weights, self.biases)
        w_out = self.weights[-1]
        energy = torch.addmm(self.biases[-1], x, w_out.t()).squeeze(-1) if need_energy else x.new_zeros(0)
        if not need_grad:
            return energy, x.new_zeros(0)
        return energy, mlp_backward(w_out.expand(x.shape[0], -1), self.weights, pre)


def _gram(w1: Tensor) -> nn.Parameter:
    """W1 W1ᵀ (accumulated in float64): lets steering step in the first layer's space (eds.steer)."""
    return nn.Parameter((w1.double() @ w1.double().t()).float(), requires_grad=False)


def mlp_hidden(h: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The MLP up to its output layer: the last hidden activation and every pre-activation (for backward).
    `weights`/`biases` may be any tail of a network's layers (eds.steer runs the layers after the first)."""
    x = h.float()
    pre: list[Tensor] = []
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        z = torch.addmm(b, x, w.t())
        pre.append(z)
        x = F.silu(z)
    return x, pre


def mlp_backward(g: Tensor, weights: Sequence[Tensor], pre: list[Tensor]) -> Tensor:
    """Input gradient from the gradient `g` at the last hidden activation (SiLU backward fused)."""
    for w, z in zip(reversed(weights[:-1]), reversed(pre), strict=True):
        g = torch.ops.aten.silu_backward(g, z) @ w
    return g


class FrozenHeads(nn.Module):
    """Several energy models on the same input as one network: first layers stacked, later layers
    block-diagonal, one output per model (head). Routing steers each row with one head; seeding the
    hand-written backward with a per-row one-hot `select` gives every row its own head's gradient in a
    single pass, so two models cost one set of kernels instead of two. Same functions as the
    FrozenEnergy of each head (to float tolerance)."""

    def __init__(self, mlps: list[EnergyMLP]):
        super().__init__()
        if not mlps or len({len(m.linears) for m in mlps}) != 1:
            raise ValueError("FrozenHeads needs one or more energy models of the same depth")
        parts = [FrozenEnergy(m) for m in mlps]
        depth = len(parts[0].weights)
        ws = [torch.cat([p.weights[0] for p in parts])]
        ws += [torch.block_diag(*[p.weights[i] for p in parts]) for i in range(1, depth)]
        bs = [torch.cat([p.biases[i] for p in parts]) for i in range(depth)]
        self.heads = len(parts)
        self.weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in ws)
        self.biases = nn.ParameterList(nn.Parameter(b, requires_grad=False) for b in bs)
        self.gram = _gram(ws[0])

    def energy_and_grad(self, h: Tensor, select: Tensor, *, need_energy: bool = True) -> tuple[Tensor, Tensor]:
        """Energies of every head [N, heads] (empty if not needed) and, per row, the input gradient of
        the heads weighted by `select` [N, heads] (one-hot: that head's dE/dh; all zero: zero), float32."""
        x, pre = mlp_hidden(h, self.weights, self.biases)
        w_out = self.weights[-1]
        energy = torch.addmm(self.biases[-1], x, w_out.t()) if need_energy else x.new_zeros(0)
        return energy, mlp_backward(select.to(w_out.dtype) @ w_out, self.weights, pre)


def info_nce(e_good: Tensor, e_bad: Tensor, temperature: float) -> Tensor:
    """InfoNCE over energies: each good state against all the batch's bad states.

    For good state i the logits are -E/T of [good_i, bad_1, ..., bad_m] and the target is good_i:
    loss_i = logsumexp(-E_good_i/T, -E_bad/T) + E_good_i/T. Vectorised over i."""
    pos = -e_good / temperature  # [n]
    neg = (-e_bad / temperature).unsqueeze(0).expand(pos.shape[0], -1)  # [n, m]
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties 1/2."""
    scores, positive = scores.float().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes")
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):
        sums = torch.zeros(len(uniq), dtype=scores.dtype).index_add_(0, inverse, ranks)
        ranks = (sums / counts)[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibrate_threshold(e_good: Tensor, e_bad: Tensor) -> float:
    """The energy threshold that best separates good (below) from bad (above) on held-out data:
    maximises balanced accuracy (Youden's J). InfoNCE fixes energies only up to a constant, so a
    fixed threshold such as 0 means nothing; this one is measured."""
    e = torch.cat([e_good, e_bad]).float()
    cands = torch.unique(e)
    mids = torch.cat([cands[:1] - 1, (cands[1:] + cands[:-1]) / 2, cands[-1:] + 1])
    tpr_good = (e_good.float().unsqueeze(0) < mids.unsqueeze(1)).float().mean(1)
    tnr_bad = (e_bad.float().unsqueeze(0) >= mids.unsqueeze(1)).float().mean(1)
    return float(mids[(tpr_good + tnr_bad).argmax()])
