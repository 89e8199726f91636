"""A gate trained on past/future-tense questions alone, put into a copy of a bundle, to be OR-ed with
that bundle's own gate by `scripts/gate_either.py`. Train data only; nothing is generated.

The seventh bundle's gate trades `tense_val` against short harm-sounding benign prompts along one
threshold (docs/results.md, Next). A second gate that knows only tense questions could flag them
without moving the first gate's threshold. It does not: from the 92 `tense_contrast` train prompts it
learns the tense frame, not the harm (it flags most ORB-H and Alpaca val prompts too).

Run from the repository root, e.g.
    python scripts/gate_tense_only.py --bundle runs/b7/bundle-untuned --collection runs/gate-tense \
        --out runs/gt-bundle-0
    python scripts/gate_either.py --bundle runs/b7/bundle-untuned --bundle runs/gt-bundle-0 \
        --set contrast:val --set tense_val:val --set orbench_hard:val:60 --set alpaca:val:30 \
        --set advbench:val:40 --set donotanswer:val:40 --set harmbench:val --recall 0.95 --recall 0.99
(`runs/gate-tense`: `eds collect --data tense_contrast:train --out runs/gate-tense`.)
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from eds import EnergyBundle
from eds.collect import Collection
from eds.probe import train_probe
from eds.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path, help="the bundle whose copy gets the tense gate")
    ap.add_argument("--collection", required=True, type=Path, help="a collection of tense_contrast:train")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--width", type=int, default=0, help="0: a linear gate")
    ap.add_argument("--recall", type=float, default=0.95)
    args = ap.parse_args()
    bundle = EnergyBundle.load(args.bundle)
    col = Collection.open(args.collection)
    col.fingerprint.check(bundle.fingerprint, "collection")
    print({ctx: dict(c) for ctx, c in col.counts().items()})
    layers = list(range(min(bundle.layers) + 1))  # the gate decides before any steering
    res = train_probe(col, layers, harmful_recall=args.recall, width=args.width, config=TrainConfig())
    print(f"tense gate at layer {res.layer}: val AUROC {res.val_auroc:.3f} (its own small val split)")
    out = copy.deepcopy(bundle)
    metrics = {"val_auroc": res.val_auroc, "harmful_caught": res.harmful_caught, "benign_passed": res.benign_passed}
    metrics |= {"recall_target": args.recall, "by_recall": res.by_recall}
    out.set_gate(res.probe, res.layer, res.threshold, metrics)
    out.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
