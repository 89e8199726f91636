"""How well bundles' harmfulness gates sort val prompts, by source, before any generation.

A gate decides at prefill whether a request is harmful (kept from steering toward answers, or routed
toward refusal). This runs each bundle's gate on labelled val prompts (one forward up to the gate
layer) at the thresholds saved for the given recall targets, and prints one Markdown table: per
source (and per `contrast` harmful category, where small losses hide in the pooled rate) the share
of harmful prompts flagged and of benign prompts passed. Nothing is generated; the thresholds are
the bundle's own, set on the held-out fifth of its training collection, so val stays unseen by it.

Run from the repository root, e.g.
    python scripts/gate_val.py --bundle runs/v6/bundle-wide --bundle runs/v7/bundle-wide
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gate_flags import gate_logits

from eds import EnergyBundle, load_model
from eds import data as data_mod
from eds.tune import TuneConfig


def group_of(p: data_mod.Prompt) -> str:
    if p.dataset == "contrast" and p.label == "harmful":
        return f"contrast/{p.category}"
    return f"{p.dataset} ({p.label})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path, action="append")
    ap.add_argument("--set", action="append", help="labelled val sets (default: eds tune's)")
    ap.add_argument("--recall", type=float, action="append", help="stored gate recall targets (default 0.9, 0.95)")
    ap.add_argument("--model", default=None, help="default: the first bundle's model")
    args = ap.parse_args()
    bundles = [EnergyBundle.load(b) for b in args.bundle]
    lm = load_model(args.model or bundles[0].fingerprint.name)
    prompts = data_mod.load_many(args.set or TuneConfig().val_sets)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(group_of(p), []).append(i)
    harmful = sorted(g for g, idx in groups.items() if prompts[idx[0]].label == "harmful")
    benign = sorted(g for g in groups if g not in harmful)
    cols: list[tuple[str, list[bool]]] = []
    for path, bundle in zip(args.bundle, bundles, strict=True):
        bundle.check(lm)
        logits = gate_logits(lm, bundle, [p.prompt for p in prompts])
        width = bundle.gate.width if bundle.gate is not None else 0
        for r in args.recall or (0.9, 0.95):
            threshold = bundle.with_gate_recall(r).gate_threshold
            kind = f"width {width}" if width else "linear"
            cols.append((f"{path} (layer {bundle.gate_layer}, {kind}) at {r}", [x > threshold for x in logits]))

    def rate(flags: list[bool], idx: list[int], flagged: bool) -> float:
        return sum(flags[i] == flagged for i in idx) / len(idx)

    def macro(flags: list[bool], names: list[str], flagged: bool) -> float:
        return sum(rate(flags, groups[g], flagged) for g in names) / len(names)

    def row(label: str, n: int | str, cells: list[str]) -> None:
        print(f"| {label} | {n} | " + " | ".join(cells) + " |")

    row("val source", "n", [c[0] for c in cols])
    print("|---|---|" + "---|" * len(cols))
    for title, names, flagged in (("harmful flagged", harmful, True), ("benign passed", benign, False)):
        for g in names:
            row(g, len(groups[g]), [f"{rate(f, groups[g], flagged):.0%}" for _, f in cols])
        pooled = [i for g in names for i in groups[g]]
        row(f"**{title}, pooled**", len(pooled), [f"**{rate(f, pooled, flagged):.1%}**" for _, f in cols])
        row(f"**{title}, mean over sources**", "", [f"**{macro(f, names, flagged):.1%}**" for _, f in cols])


if __name__ == "__main__":
    main()
