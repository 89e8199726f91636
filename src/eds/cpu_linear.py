"""Faster float32 linear layers on CPU: oneDNN with weights packed once, instead of MKL per call.

On CPUs without native bf16 (most AMD and older Intel ones) eds runs models in float32, where
`nn.Linear` calls MKL's sgemm, slow at the few rows a decoding step has. oneDNN with the weight
reordered once into its blocked layout (the op PyTorch's inductor emits for packed CPU linear layers
in some cases; IPEX packs weights the same way) computed the same product 1.7-3x faster at 16-64
rows on a 2-core AVX2-only EPYC, and greedy generation 1.78x faster (`benchmarks/dtype_speed.py`).
The model's weights are not changed: the packed copy lives beside them (memory: one more copy of
every linear weight, the LM head included even where it is tied to the embeddings, so about the
float32 model's size again: +2 GB for the default 0.5B model), the module keeps its parameters and
state dict, and `unpack_linears` puts the plain layers back. Packed and plain products differ by
float rounding (about 1e-6), as batch composition does; results do not record which ran.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

ENV_SWITCH = "EDS_PACK_LINEAR"  # "0" turns packing off where load_model would otherwise pack


def packing_available() -> bool:
    """Whether this torch build has the oneDNN ops (built with mkldnn, x86 or arm64 CPUs)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def should_pack(device: torch.device | str, dtype: torch.dtype, asked: bool | None = None) -> bool:
    """Pack for float32 on CPU (measured on one AVX2-only AMD EPYC; the op is oneDNN's on every x86
    and arm64 build); `asked` None follows the environment (`EDS_PACK_LINEAR=0` turns it off), False
    never packs."""
    if asked is None:
        asked = os.environ.get(ENV_SWITCH, "1") != "0"
    return bool(asked) and torch.device(device).type == "cpu" and dtype == torch.float32 and packing_available()


class PackedLinear(nn.Linear):
    """An `nn.Linear` whose forward runs on a oneDNN-packed copy of its weight.

    Set on existing modules by class swap (`pack_linears`), so parameters, tied weights and hooks
    stay as they were. It falls back to `F.linear` where gradients are wanted (the packed op has no
    backward) or the weight left float32 on CPU (the packed copy is then freed), and repacks a weight
    changed in place or replaced. An edit through `weight.data` bumps no version counter and cannot
    be seen without reading the weights: call `repack_linears` after one. Copies (deepcopy, pickle)
    leave the packed copy behind and repack on first use."""

    _packed: torch.Tensor | None
    _packed_src: torch.Tensor | None  # an alias of the packed weight: keeps its address from being reused
    _packed_version: int

    def _pack(self) -> None:
        w = self.weight.detach()
        self._packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_size=16)
        self._packed_src, self._packed_version = w, _version(w)

    def _stale(self) -> bool:
        src, w = self._packed_src, self.weight
        return src is None or w.data_ptr() != src.data_ptr() or _version(w) != self._packed_version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w.dtype != torch.float32 or w.device.type != "cpu":
            self._packed = self._packed_src = None  # moved or cast: the CPU float32 copy serves nothing
            return F.linear(x, w, b)
        wants_grad = x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
        if x.dtype != torch.float32 or (torch.is_grad_enabled() and wants_grad):
            return F.linear(x, w, b)
        if self._stale():  # Python ints: no device sync
            self._pack()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, b, "none", [], "")

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # an opaque oneDNN tensor can be neither copied nor pickled
        state["_packed"] = state["_packed_src"] = None
        return state


def _version(w: torch.Tensor) -> int:
    return -1 if w.is_inference() else w._version  # inference tensors keep no version counter


def pack_linears(model: nn.Module) -> int:
    """Pack every float32 CPU `nn.Linear` of `model` in place; returns how many were packed."""
    n = 0
    for mod in model.modules():
        if type(mod) is nn.Linear and mod.weight.dtype == torch.float32 and mod.weight.device.type == "cpu":
            mod.__class__ = PackedLinear
            mod._pack()
            n += 1
    return n


def repack_linears(model: nn.Module) -> int:
    """Repack every packed layer: after weights were edited through `.data`, which nothing can see."""
    mods = [m for m in model.modules() if type(m) is PackedLinear]
    for m in mods:
        m._pack()
    return len(mods)


def unpack_linears(model: nn.Module) -> int:
    """Undo `pack_linears`: plain `nn.Linear` modules again, the packed copies freed."""
    n = 0
    for mod in model.modules():
        if type(mod) is PackedLinear:
            mod.__class__ = nn.Linear
            for k in ("_packed", "_packed_src", "_packed_version"):
                mod.__dict__.pop(k, None)
            n += 1
    return n


def packed_count(model: nn.Module) -> int:
    return sum(type(m) is PackedLinear for m in model.modules())
