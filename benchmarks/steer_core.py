"""Time the steering core alone: eds's `steer_states` (steps taken in the first layer's space with the
Gram matrix W1 W1ᵀ) against the same descent stepped in the residual space (two H×width products
per step), on random states and a random energy model of the default width.

Why: on a CPU the steering overhead is the energy model's arithmetic and weight traffic, not kernel
launches, so this isolates what the first-layer formulation saves, without the noise of `generate`.

    PYTHONPATH=src python3 benchmarks/steer_core.py --hidden 896 --batch-sizes 1 8 32 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from eds.energy import EnergyMLP, FrozenEnergy, default_widths
from eds.steer import steer_states


def residual_space(h: torch.Tensor, fast: FrozenEnergy, eta: float, steps: int) -> torch.Tensor:
    """The reference descent: h -= eta*‖h‖ g/‖g‖ with g = dE/dh recomputed in the residual space each step."""
    x = h.float()
    size = eta * x.norm(dim=-1, keepdim=True)
    for _ in range(steps):
        _, g = fast.energy_and_grad(x, need_energy=False)
        x = torch.addcmul(x, g, size / g.norm(dim=-1, keepdim=True).clamp_min(1e-12), value=-1.0)
    return x.to(h.dtype)


def time_ms(fn, calls: int, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t) / calls * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=896, help="hidden size (896: Qwen2.5-0.5B)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.manual_seed(0)
    mlp = EnergyMLP(args.hidden).eval().requires_grad_(False)
    mlp.set_input_stats(torch.randn(512, args.hidden) * 4)
    fast = FrozenEnergy(mlp)
    rows = []
    with torch.inference_mode():
        for b in args.batch_sizes:
            h = (torch.randn(b, args.hidden) * 4).bfloat16()
            ours = steer_states(h, fast, eta=0.05, steps=args.steps)[0].float()
            ref = residual_space(h, fast, 0.05, args.steps).float()
            diff = float((ours - ref).norm() / ref.norm())
            t_ref, t_ours = [], []
            for _ in range(args.repeats):  # interleaved, so drifts of the host hit both alike
                t_ref += time_ms(lambda h=h: residual_space(h, fast, 0.05, args.steps), args.calls, 1)
                t_ours += time_ms(lambda h=h: steer_states(h, fast, eta=0.05, steps=args.steps), args.calls, 1)
            row = {
                "batch": b,
                "residual_space_ms": statistics.median(t_ref),
                "first_layer_space_ms": statistics.median(t_ours),
                "relative_state_difference": diff,
            }
            row["speedup"] = row["residual_space_ms"] / row["first_layer_space_ms"]
            rows.append(row)
            print(
                f"batch {b:3d}: residual space {row['residual_space_ms']:.3f} ms, first-layer space "
                f"{row['first_layer_space_ms']:.3f} ms per call ({row['speedup']:.2f}x); states differ by {diff:.1e}",
                flush=True,
            )
    if args.json:
        doc = {
            "hidden": args.hidden,
            "widths": list(default_widths(args.hidden)),
            "steps": args.steps,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
