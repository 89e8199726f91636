"""Faster float32 linear layers on CPU: oneDNN with weights packed once, instead of MKL per call.

On CPUs without native bf16 (most AMD and older Intel ones) eds runs models in float32, where
`nn.Linear` calls MKL's sgemm, slow at the few rows a decoding step has. oneDNN with the weight
reordered once into its blocked layout computes the same product 1.7-3x faster at 16-64 rows
(`benchmarks/dtype_speed.py`): what torch.compile's CPU freezing pass and IPEX do, without a
compile. The model's weights are not changed: the packed copy lives beside them (memory: one more
copy of the linear weights), the module keeps its parameters and state dict, and `unpack_linears`
puts the plain layers back.
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
    """Pack for float32 on CPU, the one case measured to gain; `asked` None follows the environment
    (`EDS_PACK_LINEAR=0` turns it off), False never packs."""
    if asked is None:
        asked = os.environ.get(ENV_SWITCH, "1") != "0"
    return bool(asked) and torch.device(device).type == "cpu" and dtype == torch.float32 and packing_available()


class PackedLinear(nn.Linear):
    """An `nn.Linear` whose forward runs on a oneDNN-packed copy of its weight.

    Set on existing modules by class swap (`pack_linears`), so parameters, tied weights and hooks
    stay as they were. It falls back to `F.linear` where gradients are wanted (the packed op has no
    backward) or the weight left float32 on CPU, and repacks a weight changed in place or replaced."""

    _packed: torch.Tensor
    _packed_from: tuple[int, int]

    def _pack(self) -> None:
        w = self.weight
        self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_size=16)
        self._packed_from = (w._version, w.data_ptr())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            x.dtype != torch.float32
            or w.dtype != torch.float32
            or w.device.type != "cpu"
            or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        ):
            return F.linear(x, w, self.bias)
        if (w._version, w.data_ptr()) != self._packed_from:  # Python ints: no device sync
            self._pack()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def pack_linears(model: nn.Module) -> int:
    """Pack every float32 CPU `nn.Linear` of `model` in place; returns how many were packed."""
    n = 0
    for mod in model.modules():
        if type(mod) is nn.Linear and mod.weight.dtype == torch.float32 and mod.weight.device.type == "cpu":
            mod.__class__ = PackedLinear
            mod._pack()
            n += 1
    return n


def unpack_linears(model: nn.Module) -> int:
    """Undo `pack_linears`: plain `nn.Linear` modules again, the packed copies freed."""
    n = 0
    for mod in model.modules():
        if type(mod) is PackedLinear:
            mod.__class__ = nn.Linear
            del mod._packed, mod._packed_from
            n += 1
    return n


def packed_count(model: nn.Module) -> int:
    return sum(type(m) is PackedLinear for m in model.modules())
