"""Phase 3: move hidden states down the energy landscape while the model generates.

`steer_states` is the pure core: (states, energy model, settings, mask) -> new states.
`steer` is the Hugging Face adapter: a context manager that installs forward pre-hooks on the
chosen decoder layers and removes them on exit, exceptions included. Which positions are steered
is decided from shapes and the KV-cache length (Python ints), never from tensor values: no host
sync in the hot path, and gating is a mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bundle import BundleError, EnergyBundle, SteerSettings
from .energy import EnergyMLP, FrozenEnergy, FrozenHeads, mlp_backward, mlp_hidden
from .models import Fingerprint, LoadedModel, find_layers, forward_cache, layer_input
from .probe import GateModel, padding_mask, pool_states


def steer_states(
    h: Tensor,
    energy: EnergyMLP | FrozenEnergy | FrozenHeads,
    *,
    eta: float,
    steps: int,
    threshold: float | Tensor | None = None,
    active: Tensor | None = None,
    select: Tensor | None = None,
    latch: bool = False,
) -> tuple[Tensor, Tensor]:
    """Take `steps` steps of h <- h - eta*‖h‖ * dE/dh / ‖dE/dh‖ on states [N, H].

    `threshold` (gated mode): a state moves on a step only while its energy is above it; with `latch`
    (gated-entry mode) the first step's energy decides, and a state above it takes every step.
    `active` [N] bool: states that may move at all. With several energy models as one `FrozenHeads`
    (routing), `select` [N, heads] one-hot says which head moves each row (no head: the row stays) and
    `threshold` is a [heads] tensor. Returns (new states in h's dtype, moved [N] bool); states that did
    not move are returned bit for bit."""
    net = energy if isinstance(energy, FrozenEnergy | FrozenHeads) else FrozenEnergy(energy)
    sel = None
    allowed = None if active is None else active.bool()
    if isinstance(net, FrozenHeads):
        if select is None:
            raise ValueError("several energy heads need `select`: which head steers each row")
        sel = select.float()
        allowed = sel.sum(-1) > 0 if allowed is None else allowed & (sel.sum(-1) > 0)
        if threshold is not None:  # each row's threshold is its head's (one number: the same for every head)
            per_head = torch.as_tensor(threshold, dtype=sel.dtype, device=sel.device).expand(sel.shape[-1])
            threshold = sel @ per_head
    return _descend(net, h, eta, steps, threshold, allowed, sel, latch)


def _descend(
    net: FrozenEnergy | FrozenHeads,
    h: Tensor,
    eta: float,
    steps: int,
    threshold: float | Tensor | None,
    allowed: Tensor | None,
    sel: Tensor | None,
    latch: bool,
) -> tuple[Tensor, Tensor]:
    """The descent, carried out in the space of the first layer's pre-activations z1 = W1 x + b1.

    dE/dx = u W1 with u = dE/dz1, so a step x -= s (u W1) moves z1 by -s u (W1 W1ᵀ), and
    ‖dE/dx‖² = u (W1 W1ᵀ) uᵀ. With the Gram matrix W1 W1ᵀ (width² numbers, computed once per
    model) each step costs one width×width product instead of two H×width ones, and x itself is
    updated once at the end (x - Σ s_k u_k W1): a third less arithmetic and weight traffic than
    stepping in the residual space, for the same states up to float rounding."""
    w, b = list(net.weights), list(net.biases)
    x = h.float()
    size = eta * x.norm(dim=-1, keepdim=True)
    z1 = torch.addmm(b[0], x, w[0].t())
    total = torch.zeros_like(z1)  # Σ_k s_k u_k
    masked = threshold is not None or allowed is not None
    moved = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device) if masked else None
    go = None
    for _ in range(steps):
        a, pre = mlp_hidden(F.silu(z1), w[1:], b[1:])  # the layers after the first
        g = mlp_backward(w[-1].expand(a.shape[0], -1) if sel is None else sel @ w[-1], w[1:], pre)
        u = torch.ops.aten.silu_backward(g, z1)  # dE/dz1
        v = u @ net.gram  # (dE/dx) W1ᵀ
        s = size * torch.linalg.vecdot(u, v).unsqueeze(-1).clamp_min(1e-24).rsqrt()  # η‖h‖ / ‖dE/dx‖
        if moved is not None:
            if go is None or not latch:  # latched: the first step's decision holds for the rest
                go = torch.ones_like(moved) if allowed is None else allowed
                if threshold is not None:
                    e = torch.addmm(b[-1], a, w[-1].t())
                    go = go & ((e.squeeze(-1) if sel is None else (e * sel).sum(-1)) > threshold)
            s = s * go.unsqueeze(-1)
            moved = moved | go
        z1 = torch.addcmul(z1, v, s, value=-1.0)
        total = torch.addcmul(total, u, s)
    x = torch.addmm(x, total, w[0], alpha=-1.0)
    if moved is None:  # always-on: every state moved (if there was a step)
        return (x.to(h.dtype) if steps else h), torch.full((h.shape[0],), steps > 0, dtype=torch.bool, device=h.device)
    return torch.where(moved.unsqueeze(-1), x.to(h.dtype), h), moved


@dataclass
class SteerStats:
    """Per sequence of the current batch: how many (layer, position) states were moved."""

    moved: Tensor | None = None
    positions: int = 0

    def reset(self, batch: int, device: torch.device) -> None:
        self.moved = torch.zeros(batch, dtype=torch.long, device=device)
        self.positions = 0


@dataclass
class _Phase:
    """Where generation stands, set by a pre-hook on the whole model before any layer runs."""

    prompt_len: int = 0
    gen_index: int = -1  # -1 = prefill; j = decode step feeding generated token j
    steering: bool = False  # whether this forward's newest position is steered (settings and gen_index)
    stats: SteerStats = field(default_factory=SteerStats)
    mask: Tensor | None = None  # [B, T] the prompt's attention mask at prefill (1 = token), for a pooling gate
    allow: Tensor | None = None  # [B] rows the harmfulness gate lets be steered (None = all)
    select: Tensor | None = None  # [B, 2] with routing: one-hot (answer head, refuse head), or no head


def _cache_len(kwargs: dict[str, Any], t: int) -> int | None:
    """Tokens already in the KV cache, or None where reading it would cost a host sync (static caches
    keep it in a device tensor); then a forward of more than one token is taken for a prefill."""
    past = forward_cache(kwargs)
    if past is None or not hasattr(past, "get_seq_length"):
        return 0
    n = past.get_seq_length()
    return None if isinstance(n, Tensor) else int(n)


def _seq_len(args: tuple, kwargs: dict[str, Any]) -> tuple[int, int]:
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None and args:
        x = args[0]
    return int(x.shape[0]), int(x.shape[1])


@dataclass
class SteerHandle:
    """What `steer` yields: the settings in force and per-sequence statistics of the last batch."""

    settings: SteerSettings
    layers: list[int]
    stats: SteerStats


@contextmanager
def steer(
    lm: LoadedModel | nn.Module,
    bundle: EnergyBundle,
    *,
    eta: float | None = None,
    steps: int | None = None,
    mode: str | None = None,
    positions: str | int | None = None,
    layers: list[int] | None = None,
    harm_gate: bool | None = None,
    route: bool | None = None,
    gate_model: LoadedModel | None = None,
) -> Iterator[SteerHandle]:
    """Steer generation with an energy bundle inside a `with` block; the model is restored on exit.

    Settings default to those saved in the bundle; any of eta, steps, mode, positions, layers,
    harm_gate, route overrides them. With `route`, rows the harm gate flags are steered by the
    bundle's refuse models (toward refusal) instead of being left alone. A bundle whose gate reads
    another model's states runs that model (`gate_model`, by default loaded once by the name the bundle
    records) on each prompt's token ids before the first layer: once per prompt when generating with
    a KV cache (without one, every forward is a whole prompt and is read again, as the steered model's
    own gate does). A static cache hides whether a forward continues a conversation; it is then taken
    for a new prompt. Nesting is allowed (the steering composes), and so is re-entering."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    # warnings point at the user's `with steer(...)`: past this generator and contextlib's __enter__
    bundle.check(lm if isinstance(lm, LoadedModel) else Fingerprint.of(model), stacklevel=4)
    settings = replace(
        bundle.steering,
        **{
            k: v
            for k, v in {
                "eta": eta,
                "steps": steps,
                "mode": mode,
                "positions": positions,
                "harm_gate": harm_gate,
                "route": route,
            }.items()
            if v is not None
        },
    )
    settings.validate()
    use = list(layers) if layers is not None else bundle.layers
    missing = [layer for layer in use if layer not in bundle.models]
    if missing:
        raise BundleError(f"layers {missing} are not in the bundle (it has {bundle.layers})")
    layer_modules = find_layers(model, lm.layers_attr if isinstance(lm, LoadedModel) else None)[1]
    device = next(model.parameters()).device
    energies = {layer: bundle.frozen(layer, _device_of(layer_modules[layer], device)) for layer in use}
    route = settings.route and settings.harm_gate and bundle.gate_layer is not None
    if route and not all(layer in bundle.refuse_models for layer in use):
        raise BundleError("route=True needs refuse models for the steered layers (train with --route)")
    # with routing, each layer's answer and refuse models run as one stacked network (FrozenHeads)
    heads = (
        {layer: bundle.frozen_heads(layer, _device_of(layer_modules[layer], device)) for layer in use} if route else {}
    )
    phase = _Phase()
    limit = {"prompt": 0, "all": None}.get(settings.positions, settings.positions)  # type: ignore[arg-type]

    def model_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        batch, t = _seq_len(args, kwargs)
        past = _cache_len(kwargs, t)
        if t > 1 or past == 0:  # a prompt: a prefill, a continued conversation, or a forward without cache
            phase.prompt_len = (past or 0) + t
            phase.gen_index = -1
            phase.stats.reset(batch, device)
            phase.allow = phase.select = None
            # the prompt's tokens, padding excluded (a static cache hides its length: a prompt then starts it)
            phase.mask = padding_mask(kwargs.get("attention_mask"), past or 0, t)
            if reader is not None:
                read_prompt(args, kwargs, past)
        else:  # decode: one new token per sequence
            phase.gen_index = past - phase.prompt_len if past is not None else phase.gen_index + 1
        j = phase.gen_index
        phase.steering = settings.steps > 0 and (j < 0 or limit is None or j < limit)
        phase.stats.positions += phase.steering

    gated = settings.mode in ("gated", "gated-entry")
    latch = settings.mode == "gated-entry"  # the entry energy decides for every step

    def make_layer_hook(layer: int):
        energy, threshold = energies[layer], bundle.thresholds[layer]
        gate = threshold if gated else None
        stacked = heads.get(layer)
        head_gates = (
            torch.tensor([threshold, bundle.refuse_thresholds[layer]], device=stacked.weights[0].device)
            if stacked is not None and gated
            else None
        )

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if not phase.steering:
                return None
            hidden = layer_input(args, kwargs)
            last = hidden[:, -1, :]
            if stacked is not None and phase.select is not None:  # routed: each row by its own head
                model, kw = stacked, {"threshold": head_gates, "select": phase.select.to(last.device), "latch": latch}
            else:
                active = None if phase.allow is None else phase.allow.to(last.device)
                model, kw = energy, {"threshold": gate, "active": active, "latch": latch}
            new_last, moved = steer_states(last, model, eta=settings.eta, steps=settings.steps, **kw)
            if phase.stats.moved is not None:
                phase.stats.moved += moved.to(phase.stats.moved.device)
            if hidden.shape[1] == 1:
                new = new_last.unsqueeze(1)
            else:
                new = hidden.clone()
                new[:, -1, :] = new_last
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook

    probe, reader = None, None
    if settings.harm_gate and bundle.gate_layer is not None and bundle.gate_reader is not None:
        # its forward would run these hooks again, and again (one loaded by name is never the steered model)
        if gate_model is not None and gate_model.model is model:
            raise BundleError("the gate model is the steered model itself: train the gate without --gate-model")
        gm = bundle.gate_model_for(lm if isinstance(lm, LoadedModel) else None, gate_model)
        reader = GateModel(gm, bundle.gate_layer, bundle.gate_on(gm.device))
        probe = reader.probe
    elif settings.harm_gate and bundle.gate_layer is not None:
        probe = bundle.gate_on(_device_of(layer_modules[bundle.gate_layer], device))
    if probe is not None and probe.span is not None and isinstance(lm, LoadedModel):
        span = lm.template_span()
        if span != probe.span:  # the gate would average template tokens or miss the request's
            raise BundleError(
                f"this bundle's gate reads the user's text, found by position in a chat format with "
                f"{probe.span[0]} tokens before it and {probe.span[1]} after; this model's format has "
                f"{span[0]} and {span[1]}: load it with the system prompt the bundle's collections used"
            )
    gate_threshold = bundle.gate_threshold
    # never below the gate threshold: a row goes one way, the other, or (three-way) neither
    route_threshold = gate_threshold if bundle.route_threshold is None else max(bundle.route_threshold, gate_threshold)

    def decide(logit: Tensor) -> None:
        """Which rows may be steered (and, routed, which way) from the gate's harmfulness logits [B]."""
        phase.allow = logit <= gate_threshold
        if route:  # three-way when route_threshold > gate_threshold: rows in between are not steered
            phase.select = torch.stack([phase.allow, logit > route_threshold], dim=-1)

    def check_mask(batch: int) -> None:
        if probe.pool != "last" and phase.mask is None and batch > 1:
            raise RuntimeError(
                "this bundle's gate pools the prompt, and the model was called without an attention mask "
                "it can read: a padded batch would be pooled with its padding (pass attention_mask)"
            )

    def gate_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if phase.gen_index == -1:  # decided once per sequence, on the unsteered prompt
            hidden = layer_input(args, kwargs)
            check_mask(hidden.shape[0])
            decide(probe(pool_states(hidden, phase.mask, probe.pool, probe.span)))

    def read_prompt(args: tuple, kwargs: dict[str, Any], past: int | None) -> None:
        """The gate model's decision, from the prompt's token ids, before the steered model's first layer."""
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], Tensor) and not args[0].is_floating_point():
            ids = args[0]
        if ids is None:
            raise RuntimeError("this bundle's gate model reads the prompt's token ids: call the model with input_ids")
        if past:
            raise RuntimeError(
                "this bundle's gate model reads the whole prompt, and this forward continues a cached one: "
                "pass the whole conversation as the prompt"
            )
        check_mask(ids.shape[0])
        decide(reader.logits(ids, phase.mask).to(device))

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(model_pre_hook, with_kwargs=True))
        if probe is not None and reader is None:
            assert bundle.gate_layer is not None
            handles.append(
                layer_modules[bundle.gate_layer].register_forward_pre_hook(gate_hook, with_kwargs=True, prepend=True)
            )
        for layer in use:
            handles.append(layer_modules[layer].register_forward_pre_hook(make_layer_hook(layer), with_kwargs=True))
        yield SteerHandle(settings=settings, layers=use, stats=phase.stats)
    finally:
        for h in handles:
            h.remove()


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    """Where a layer runs (models split over several GPUs put layers on different devices)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else default
