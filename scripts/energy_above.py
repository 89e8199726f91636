"""Which held-out states a bundle's energy models put above their thresholds, by label and outcome.

Gated steering moves only states above a layer's calibrated threshold. This says, on the held-out
fifth of the bundle's own training collection (the rows `eds train` scored layers on; the same
split, rebuilt from the bundle's saved seed and fraction), what share of the last-prompt-token
states of each kind (benign answered, benign refused = false refusals, harmful refused, harmful
answered) is above the threshold at each steered layer: how much gated steering can reach at all.

Run from the repository root, e.g.
    python scripts/energy_above.py runs/recipe --bundle runs/b7/bundle-untuned --layers 17,18,19
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from eds import EnergyBundle
from eds.collect import open_collections
from eds.train import TrainConfig, split_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collections", nargs="+", type=Path, help="the bundle's training collections")
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--layers", help="comma-separated (default: the bundle's)")
    args = ap.parse_args()
    bundle = EnergyBundle.load(args.bundle)
    col = open_collections(args.collections)
    tc = bundle.train_config
    cfg = TrainConfig(seed=tc["seed"], val_fraction=tc["val_fraction"], val_datasets=tuple(tc["val_datasets"]))
    _, held = split_rows(col.records, cfg)
    kinds = {
        "benign answered": ("benign", False),
        "benign refused (false refusals)": ("benign", True),
        "harmful refused": ("harmful", True),
        "harmful answered": ("harmful", False),
    }
    rows = {
        k: [i for i in held if (col.records[i]["label"], bool(col.records[i]["refused"])) == v]
        for k, v in kinds.items()
    }
    layers = [int(x) for x in args.layers.split(",")] if args.layers else bundle.layers
    print(f"held-out rows: {len(held)} of {len(col.records)}; share of last-prompt-token states above the threshold")
    print("| kind | n | " + " | ".join(f"layer {layer}" for layer in layers) + " |")
    print("|---|---|" + "---|" * len(layers))
    with torch.no_grad():
        for kind, idx in rows.items():
            cells = []
            for layer in layers:
                e = bundle.models[layer](col.states(layer)[idx, 0].float()).squeeze(-1)
                cells.append(f"{(e > bundle.thresholds[layer]).float().mean().item():.0%}")
            print(f"| {kind} | {len(idx)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
