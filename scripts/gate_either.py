"""Two bundles' gates as one: a prompt is flagged when either gate flags it. Val only, before generation.

The sixth bundle's gate reads the last prompt token and keeps tense questions; a gate on the mean of
the prompt sorts prompt types it never saw better and loses tense questions (docs/results.md,
session 9). Flagging on either could keep both strengths, at some cost in benign prompts passed.
This prints, for each pair of stored recall targets, the share of each labelled val source's harmful
prompts flagged and of its benign prompts passed, and how many of the benign prompts the base model
refused (read from an `eds tune` base records file) are passed: the false refusals steering can
reach. Nothing is generated; each gate keeps its own threshold for its recall.

Run from the repository root, e.g.
    python scripts/gate_either.py --bundle runs/v10/bundle-wide --bundle runs/v11/bundle-wide \
        --base runs/tune10/base.jsonl --recall 0.85 --recall 0.9 --recall 0.95
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from gate_flags import gate_logits

from eds import EnergyBundle, load_model
from eds.evaluate import labelled_prompts
from eds.io import read_records
from eds.tune import TuneConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path, action="append", help="exactly two")
    ap.add_argument("--base", type=Path, help="eds tune base records: which benign val prompts the base model refused")
    ap.add_argument("--set", action="append", help="labelled val sets (default: eds tune's)")
    ap.add_argument("--recall", type=float, action="append", help="stored recall targets (default 0.9, 0.95)")
    args = ap.parse_args()
    if len(args.bundle) != 2:
        raise SystemExit("give two bundles (--bundle A --bundle B)")
    pairs = labelled_prompts(args.set or TuneConfig().val_sets)
    bundles = [EnergyBundle.load(b) for b in args.bundle]
    lm = load_model(bundles[0].fingerprint.name)
    for b in bundles:
        b.check(lm)
    prompts = [p.prompt for _, p in pairs]
    logits = [gate_logits(lm, b, prompts) for b in bundles]
    refused = read_records(args.base) if args.base else {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (group, p) in enumerate(pairs):
        groups.setdefault((p.label, group), []).append(i)
    base_fr = [i for i, (_, p) in enumerate(pairs) if p.label == "benign" and refused.get(p.key, {}).get("refused")]
    recalls = args.recall or [0.9, 0.95]
    cols = []
    for ra, rb in [*itertools.product(recalls, recalls), *((r, None) for r in recalls), *((None, r) for r in recalls)]:
        ta = bundles[0].with_gate_recall(ra).gate_threshold if ra else None
        tb = bundles[1].with_gate_recall(rb).gate_threshold if rb else None
        flags = [
            (ta is not None and a > ta) or (tb is not None and b > tb)
            for a, b in zip(logits[0], logits[1], strict=True)
        ]
        cols.append((f"A {ra or '-'} / B {rb or '-'}", flags))
    print(f"A = {args.bundle[0]} (layer {bundles[0].gate_layer}, {bundles[0].gate.kind})")
    print(f"B = {args.bundle[1]} (layer {bundles[1].gate_layer}, {bundles[1].gate.kind})\n")
    print("| val source | n | " + " | ".join(c[0] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (label, group), idx in sorted(groups.items(), key=lambda kv: (kv[0][0] != "harmful", kv[0][1])):
        want = label == "harmful"
        cells = [f"{sum(f[i] == want for i in idx) / len(idx):.0%}" for _, f in cols]
        print(f"| {group} ({'flagged' if want else 'passed'}) | {len(idx)} | " + " | ".join(cells) + " |")
    if base_fr:
        cells = [f"{sum(not f[i] for i in base_fr)}/{len(base_fr)}" for _, f in cols]
        print("| base false refusals passed | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
