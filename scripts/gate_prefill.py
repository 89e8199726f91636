"""Gates trained on prompts alone (one forward each, no generation), compared on the tune's val sets.

A harmfulness gate learns from prompts and their dataset labels, never from replies, so its training
states need only a forward pass to the gate layer (`eds.probe.gate_states`), not a collection. This
trains one gate per `--train NAME=SPEC,SPEC,...` (the same recipe as `eds train`: a held-out fifth
sets the thresholds, the layer of best held-out AUROC is kept) and prints, per val source, the share
of harmful prompts flagged and of benign prompts passed at each recall target. States are cached per
prompt set under `--cache`, so a second variant pays only for its new prompts.

Run from the repository root, e.g. (session 10, docs/results.md)
    python scripts/gate_prefill.py --train "sixth=$(python -c 'from eds.data import *; \
print(",".join(RECIPE_MIXTURE + GATE_MIXTURE))')" --train "more=...,scripts/data/tense_more.jsonl"
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from gate_flags import val_table
from safetensors.torch import load_file, save_file

from eds import load_model
from eds.collect import Collection
from eds.data import load_many
from eds.evaluate import labelled_prompts
from eds.probe import RECALLS, gate_states, train_probe
from eds.train import TrainConfig
from eds.tune import TuneConfig


def cached_states(lm, texts: list[str], layers: list[int], cache: Path) -> dict[int, torch.Tensor]:
    model = json.dumps(lm.fingerprint.to_dict(), sort_keys=True)  # the shape too, not the name alone
    head = [model, lm.dtype_name, str(lm.device), lm.chat_texts(["<prompt>"])[0], str(layers)]
    key = hashlib.sha256("\n".join([*head, *texts]).encode()).hexdigest()
    path = cache / f"{key[:16]}.safetensors"
    if path.exists():
        return {int(k): v for k, v in load_file(str(path)).items()}
    states = gate_states(lm, texts, layers, "last", progress=True)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({str(k): v.contiguous() for k, v in states.items()}, str(path))
    return states


def span(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", action="append", required=True, help="NAME=SPEC,SPEC,... (repeatable)")
    ap.add_argument("--layers", default="10-17", help="layers whose states are read and cached (default 10-17)")
    ap.add_argument("--gate-layers", default=None, help="layers the gate is chosen from (default: --layers)")
    ap.add_argument("--recall", type=float, action="append", help="harmful recall targets (default 0.9, 0.95)")
    ap.add_argument("--set", action="append", help="labelled val sets (default: eds tune's, plus tense_val:val)")
    ap.add_argument("--dtype", default="default")
    ap.add_argument("--cache", type=Path, default=Path("runs/gate-prefill-cache"))
    args = ap.parse_args()
    layers = span(args.layers)
    chosen_from = span(args.gate_layers) if args.gate_layers else layers
    if not set(chosen_from) <= set(layers):
        raise SystemExit(f"--gate-layers {chosen_from} must lie within --layers {layers}")
    recalls = args.recall or [0.9, 0.95]
    if unknown := [r for r in recalls if r not in RECALLS and r != max(recalls)]:
        # the gate stores thresholds for these and for the highest recall asked (it trains for that one)
        raise SystemExit(f"--recall {unknown}: use the highest recall or one of {', '.join(map(str, RECALLS))}")
    lm = load_model(dtype=args.dtype)
    sets = args.set or [
        *TuneConfig().val_sets,
        *(["tense_val:val"] if "tense_val:val" not in TuneConfig().val_sets else []),
    ]
    pairs = labelled_prompts(sets)
    val = cached_states(lm, [p.prompt for _, p in pairs], layers, args.cache)
    sources: dict[tuple[str, str], list[int]] = {}
    for i, (group, p) in enumerate(pairs):
        sources.setdefault((p.label, group), []).append(i)
    columns: list[tuple[str, list[bool]]] = []
    for arg in args.train:
        name, _, specs = arg.partition("=")
        seen: set[str] = set()
        records, parts = [], []
        for spec in specs.split(","):  # one cache entry per spec: variants share what they share
            prompts = load_many([spec], seed=0)
            states = cached_states(lm, [p.prompt for p in prompts], layers, args.cache)
            keep = [i for i, p in enumerate(prompts) if not (p.prompt in seen or seen.add(p.prompt))]
            records += [
                {"key": p.key, "label": p.label, "prompt": p.prompt, "dataset": p.dataset, "split": p.split}
                | {"outcome": p.label}  # split_rows stratifies by dataset and this: here, the label
                for p in (prompts[i] for i in keep)
            ]
            parts.append({k: v[keep] for k, v in states.items()})
        train_states = {k: torch.cat([part[k] for part in parts]) for k in layers}
        col = Collection(path=Path(name), manifest={}, records=records)
        gate = train_probe(
            col, chosen_from, harmful_recall=max(recalls), config=TrainConfig(), states=train_states, pool="last"
        )
        print(f"- {name}: {len(records)} prompts, gate at layer {gate.layer}, held-out AUROC {gate.val_auroc:.3f}")
        with torch.no_grad():
            logits = gate.probe(val[gate.layer])
        for r in recalls:
            threshold = gate.by_recall[str(r)]["threshold"]
            columns.append((f"{name} (layer {gate.layer}) at {r}", (logits > threshold).tolist()))
    print()
    val_table(columns, sources)


if __name__ == "__main__":
    main()
