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
from torch import Tensor, nn

from .bundle import BundleError, EnergyBundle, SteerSettings
from .energy import EnergyMLP, FrozenEnergy
from .models import Fingerprint, LoadedModel, find_layers, forward_cache, layer_input


def steer_states(
    h: Tensor,
    energy: EnergyMLP | FrozenEnergy,
    *,
    eta: float,
    steps: int,
    threshold: float | None = None,
    active: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Take `steps` steps of h <- h - eta*‖h‖ * dE/dh / ‖dE/dh‖ on states [N, H].

    `threshold` (gated mode): a state moves on a step only while its energy is above it.
    `active` [N] bool: states that may move at all. Returns (new states in h's dtype, moved [N] bool);
    states that did not move are returned bit for bit."""
    fast = energy if isinstance(energy, FrozenEnergy) else FrozenEnergy(energy)
    x = h.float()
    size = eta * x.norm(dim=-1, keepdim=True)
    if threshold is None and active is None:  # always-on: no energies, no masks
        for _ in range(steps):
            _, g = fast.energy_and_grad(x, need_energy=False)
            x = torch.addcmul(x, g, size / g.norm(dim=-1, keepdim=True).clamp_min(1e-12), value=-1.0)
        moved = torch.full((h.shape[0],), steps > 0, dtype=torch.bool, device=h.device)
        return (x.to(h.dtype) if steps else h), moved
    allowed = torch.ones(h.shape[0], dtype=torch.bool, device=h.device) if active is None else active.bool()
    moved = torch.zeros_like(allowed)
    for _ in range(steps):
        e, g = fast.energy_and_grad(x, need_energy=threshold is not None)
        go = allowed if threshold is None else allowed & (e > threshold)
        x = torch.addcmul(x, g, go.unsqueeze(-1) * size / g.norm(dim=-1, keepdim=True).clamp_min(1e-12), value=-1.0)
        moved = moved | go
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
    allow: Tensor | None = None  # [B] rows the harmfulness gate lets be steered (None = all)


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
) -> Iterator[SteerHandle]:
    """Steer generation with an energy bundle inside a `with` block; the model is restored on exit.

    Settings default to those saved in the bundle; any of eta, steps, mode, positions, layers,
    harm_gate, route overrides them. With `route`, rows the harm gate flags are steered by the
    bundle's refuse models (toward refusal) instead of being left alone. Nesting is allowed (the
    steering composes), and so is re-entering."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    fp = lm.fingerprint if isinstance(lm, LoadedModel) else Fingerprint.of(model)
    bundle.check(fp)
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
    refusers = (
        {layer: bundle.frozen(layer, _device_of(layer_modules[layer], device), refuse=True) for layer in use}
        if route
        else {}
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
            phase.allow = None
        else:  # decode: one new token per sequence
            phase.gen_index = past - phase.prompt_len if past is not None else phase.gen_index + 1
        j = phase.gen_index
        phase.steering = settings.steps > 0 and (j < 0 or limit is None or j < limit)
        phase.stats.positions += phase.steering

    def make_layer_hook(layer: int):
        energy, threshold = energies[layer], bundle.thresholds[layer]
        gate = threshold if settings.mode == "gated" else None
        refuser = refusers.get(layer)
        refuse_gate = bundle.refuse_thresholds.get(layer) if settings.mode == "gated" else None

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if not phase.steering:
                return None
            hidden = layer_input(args, kwargs)
            last = hidden[:, -1, :]
            new_last, moved = steer_states(
                last,
                energy,
                eta=settings.eta,
                steps=settings.steps,
                threshold=gate,
                active=None if phase.allow is None else phase.allow.to(last.device),
            )
            if refuser is not None and phase.allow is not None:  # flagged rows: toward refusal
                new_last, moved_r = steer_states(
                    new_last,
                    refuser,
                    eta=settings.eta,
                    steps=settings.steps,
                    threshold=refuse_gate,
                    active=~phase.allow.to(last.device),
                )
                moved = moved | moved_r
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

    probe = None
    if settings.harm_gate and bundle.gate_layer is not None:
        probe = bundle.gate_on(_device_of(layer_modules[bundle.gate_layer], device))
    gate_threshold = bundle.gate_threshold

    def gate_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if phase.gen_index == -1:  # decided once per sequence, on the unsteered prompt
            hidden = layer_input(args, kwargs)
            phase.allow = probe(hidden[:, -1, :]) <= gate_threshold

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(model_pre_hook, with_kwargs=True))
        if probe is not None:
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
