"""How a harmfulness gate treats prompt types it never saw: leave one `contrast` type out, on train data.

A gate is chosen and thresholded on a held-out fifth of its own training prompts, which share their
sources and styles with the rest, so it looks better there than on a benchmark of a new kind (XSTest,
OKTest). Here each `contrast` prompt type (a benign kind, such as homonyms of violent words, with its
harmful twins) is left out of the gate's training in turn; the gate is fitted on everything else,
thresholded at the given recall on the usual held-out fifth, and scored on the type it never saw.
Per gate layer and pooling this prints the AUROC on the unseen types (mean over types), and at the
threshold the share of their benign prompts passed, of their harmful ones flagged, and of the
benign ones the base model refused (the false refusals steering is for) passed. The `tense_contrast`
questions (past/future tense, with harmful twins) are left out the same way and reported apart. Only train-split
collections are read: it can choose a gate's layer and pooling without touching val or test.

Run from the repository root, e.g.
    python scripts/gate_loso.py runs/default runs/scary runs/contrast4 runs/jb runs/tense \
        runs/contrast5-tense --pool last --pool mean --layer 10 --layer 13 --layer 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from eds import load_model
from eds.collect import open_collections
from eds.energy import auroc
from eds.pipeline import system_prompt_of
from eds.probe import GATE_WIDTH, fit_probe, gate_states, threshold_for
from eds.train import TrainConfig, check_no_test, split_rows

#: each benign `contrast` type with its harmful twins (datasets README): left out together
TYPES = {
    "homonym": ("homonym", "contrast_homonym"),
    "figurative": ("figurative", "contrast_figurative"),
    "safe target": ("safe_target", "contrast_safe_target"),
    "safe context": ("safe_context", "contrast_safe_context"),
    "definition": ("definition_history", "contrast_definition"),
    "privacy": ("privacy_public", "privacy_fictional", "contrast_privacy"),
    "discrimination": ("nonsense_discrimination", "nonsense_group", "contrast_discrimination"),
    "safety": ("safety_info", "contrast_safety"),
    "taboo": ("taboo", "contrast_taboo"),
}
#: past/future-tense questions and their harmful twins (`tense_contrast`), left out the same way but
#: reported apart: they are the type the tune's `tense_val` guards, and pooling would hide them
TENSE = {"tense": ("tense", "contrast_tense")}
TYPED = ("contrast", "tense_contrast")  # the datasets whose categories are such types


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collections", nargs="+", type=Path, help="the gate's training collections, read as one")
    ap.add_argument("--pool", action="append", choices=("last", "mean"), help="default: last and mean")
    ap.add_argument("--layer", type=int, action="append", required=True)
    ap.add_argument("--recall", type=float, action="append", help="threshold recall targets (default 0.9, 0.95)")
    ap.add_argument("--width", type=int, default=GATE_WIDTH)
    ap.add_argument("--model", default=None, help="for mean pooling (default: the collections' model)")
    args = ap.parse_args()
    col = open_collections(args.collections)
    cfg = TrainConfig()
    check_no_test(col.records, cfg)
    recs = col.records
    harmful = torch.tensor([r["label"] == "harmful" for r in recs])
    refused = torch.tensor([bool(r["refused"]) for r in recs])
    types = {**TYPES, **TENSE}
    kind = [
        next((t for t, cats in types.items() if r["category"] in cats), None) if r["dataset"] in TYPED else None
        for r in recs
    ]
    if not any(k in TYPES for k in kind):
        raise SystemExit("no `contrast` prompts in these collections: nothing to leave out")
    tr_all, va_all = split_rows(recs, cfg)
    recalls = args.recall or (0.9, 0.95)
    pools = args.pool or ["last", "mean"]
    lm = load_model(args.model or col.fingerprint.name) if "mean" in pools else None
    prompts = [r["prompt"] for r in recs]
    print(
        "| pool | layer | recall | left out | AUROC, unseen | benign passed | harmful flagged | false refusals passed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    # each type's rows, and the training and threshold rows left when it is out: the same for every gate
    left_out = {t: out for t in types if (out := torch.tensor([k == t for k in kind])).any()}
    folds = {
        t: (torch.tensor([i for i in tr_all if not out[i]]), torch.tensor([i for i in va_all if not out[i]]))
        for t, out in left_out.items()
    }
    for pool in pools:
        if pool == "mean":
            assert lm is not None
            feats = gate_states(lm, prompts, args.layer, "mean", system_prompt=system_prompt_of(col))
        else:
            feats = {layer: col.states(layer)[:, 0].float() for layer in args.layer}
        for layer in args.layer:
            x = feats[layer]
            logits: dict[str, torch.Tensor] = {}
            thresholds: dict[str, dict[float, float]] = {}
            for t, (tr, va) in folds.items():
                probe = fit_probe(x[tr], harmful[tr], width=args.width, pool=pool, seed=cfg.seed)
                with torch.no_grad():
                    lo = probe(x)
                logits[t] = lo
                thresholds[t] = {r: threshold_for(lo[va], harmful[va], r)["threshold"] for r in recalls}
            for label, group in (("contrast types", TYPES), ("tense questions", TENSE)):
                done = [t for t in group if t in logits]
                if not done:
                    continue
                aucs = []
                for t in done:
                    out = left_out[t]
                    aucs.append(float(auroc(logits[t][out], harmful[out])))
                for r in recalls:
                    n = {"b": [0, 0], "h": [0, 0], "fr": [0, 0]}
                    for t in done:
                        out = left_out[t]
                        flag = logits[t] > thresholds[t][r]
                        for key, rows, want in (
                            ("b", out & ~harmful, False),
                            ("h", out & harmful, True),
                            ("fr", out & ~harmful & refused, False),
                        ):
                            n[key][0] += int((flag[rows] == want).sum())
                            n[key][1] += int(rows.sum())
                    cells = [f"{a}/{b} ({a / max(b, 1):.0%})" for a, b in n.values()]
                    row = f"| {pool} | {layer} | {r} | {label} | {sum(aucs) / len(aucs):.3f} | "
                    print(row + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
