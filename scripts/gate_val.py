"""How well bundles' harmfulness gates sort val prompts, by source, before any generation.

A gate decides at prefill whether a request is harmful (kept from steering toward answers, or routed
toward refusal). This runs each bundle's gate on labelled val prompts (one forward up to the gate
layer) at the thresholds saved for the given recall targets, and prints one Markdown table: per
source (and per `contrast` category, where small losses hide in the pooled rate) the share
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
from eds.evaluate import labelled_prompts
from eds.tune import TuneConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path, action="append")
    ap.add_argument("--set", action="append", help="labelled val sets (default: eds tune's)")
    ap.add_argument("--recall", type=float, action="append", help="stored gate recall targets (default 0.9, 0.95)")
    ap.add_argument("--model", default=None, help="default: the first bundle's model")
    args = ap.parse_args()
    # the sources eds tune and eds eval report (group and label), each prompt read once
    pairs = labelled_prompts(args.set or TuneConfig().val_sets)
    sources: dict[tuple[str, str], list[int]] = {}
    categories: dict[tuple[str, str], list[int]] = {}  # contrast by label and type: small losses hide in the pool
    for i, (group, p) in enumerate(pairs):
        sources.setdefault((p.label, group), []).append(i)
        if p.dataset == "contrast":
            categories.setdefault((p.label, p.category), []).append(i)
    labels = {label for label, _ in sources}
    if labels != {"benign", "harmful"}:
        raise SystemExit(f"the sets hold only {sorted(labels)} prompts: a gate needs both to be judged")
    bundles = [EnergyBundle.load(b) for b in args.bundle]
    lm = load_model(args.model or bundles[0].fingerprint.name)
    cols: list[tuple[str, list[bool]]] = []
    for path, bundle in zip(args.bundle, bundles, strict=True):
        bundle.check(lm)
        logits = gate_logits(lm, bundle, [p.prompt for _, p in pairs])
        assert bundle.gate is not None  # gate_logits stops on a bundle without one
        kind = bundle.gate.kind
        for r in args.recall or (0.9, 0.95):
            threshold = bundle.with_gate_recall(r).gate_threshold
            cols.append((f"{path} (layer {bundle.gate_layer}, {kind}) at {r}", [x > threshold for x in logits]))

    def rate(flags: list[bool], idx: list[int], flagged: bool) -> float:
        return sum(flags[i] == flagged for i in idx) / len(idx)

    def row(label: str, n: int | str, cells: list[str]) -> None:
        print(f"| {label} | {n} | " + " | ".join(cells) + " |")

    row("val source", "n", [c[0] for c in cols])
    print("|---|---|" + "---|" * len(cols))
    for label, title, flagged in (("harmful", "harmful flagged", True), ("benign", "benign passed", False)):
        names = sorted(k for k in sources if k[0] == label)
        for key in names:
            row(f"{key[1]} ({label})", len(sources[key]), [f"{rate(f, sources[key], flagged):.0%}" for _, f in cols])
            if key[1] == "contrast":
                for (of, cat), idx in sorted(categories.items()):
                    if of == label:
                        row(f"&nbsp;&nbsp;{cat}", len(idx), [f"{rate(f, idx, flagged):.0%}" for _, f in cols])
        pooled = [i for k in names for i in sources[k]]
        macro = [sum(rate(f, sources[k], flagged) for k in names) / len(names) for _, f in cols]
        row(f"**{title}, pooled**", len(pooled), [f"**{rate(f, pooled, flagged):.1%}**" for _, f in cols])
        row(f"**{title}, mean over sources**", "", [f"**{m:.1%}**" for m in macro])


if __name__ == "__main__":
    main()
