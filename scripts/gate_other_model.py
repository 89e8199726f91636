"""Steer the default model on val with a harmfulness gate read from another model's states (an experiment).

Every bundle's gate reads the steered model's own states. `scripts/gate_pools.py --model ...` found that
the 1.5B model's states sort `tense_val` against short harm-sounding benign prompts better, at the gate
alone (docs/results.md, session 13). This asks whether that holds once replies are generated: it fits
that gate (`eds train`'s gate recipe on the 3,017 gate-training prompts, thresholds on the held-out
fifth), scores the val prompts with it, then runs a bundle's steering on the default model with the
gate's decisions looked up per prompt in place of its own gate, and scores the run against the base
records of an earlier `eds tune` (`score`, the tune's own rule) beside that tune's candidates.

Nothing here is a product path: the lookup stands in for a gate model that `steer` would run at prefill.
    python scripts/gate_other_model.py --bundle runs/b7/bundle-untuned --tune runs/tune-b7 \
        --gate-model qwen2.5-coder-1.5b-instruct --layer 12 --pool user --recall 0.95 --eta 0.05 --layers 17,18,19
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
from gate_pools import cached, gate_train_set
from torch import nn

from eds import load_model
from eds.bundle import EnergyBundle
from eds.energy import auroc
from eds.evaluate import evaluate_refusals, labelled_prompts, summarise
from eds.io import read_records
from eds.probe import GATE_WIDTH, fit_probe, threshold_for
from eds.train import TrainConfig, split_rows
from eds.tune import score

#: the layers whose states scripts/gate_pools.py cached for the 1.5B model (its cache is keyed by the layer list)
CACHED_LAYERS = [12, 16]


class LookupGate(nn.Module):
    """A gate whose logits were computed beforehand, per prompt text; `current` is set per batch."""

    pool, span = "last", None

    def __init__(self) -> None:
        super().__init__()
        self.current: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.current is not None and self.current.shape[0] == x.shape[0]
        return self.current.to(x.device)


def gate_logits(model: str, layer: int, pool: str, recall: float, val_prompts: list[str], cache: Path):
    lm = load_model(model)
    states, recs = gate_train_set(lm, CACHED_LAYERS, cache)  # the gates scripts/gate_pools.py compared
    x, harmful = states[f"{pool}.{layer}"], torch.tensor([r["label"] == "harmful" for r in recs])
    tr, va = (torch.tensor(i) for i in split_rows(recs, TrainConfig()))
    probe = fit_probe(x[tr], harmful[tr], width=GATE_WIDTH, pool="last", seed=0)
    with torch.no_grad():
        held = probe(x[va])
        val = probe(cached(lm, val_prompts, CACHED_LAYERS, cache)[f"{pool}.{layer}"])
    th = threshold_for(held, harmful[va], recall)["threshold"]
    print(f"gate {model} {pool}@{layer}: held-out AUROC {float(auroc(held, harmful[va])):.3f}, threshold {th:.3f}")
    del lm
    gc.collect()
    return dict(zip(val_prompts, val.tolist(), strict=True)), th


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--tune", type=Path, required=True, help="an eds tune folder: its val sets and base records")
    ap.add_argument("--gate-model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--layer", type=int, default=12, choices=CACHED_LAYERS)
    ap.add_argument("--pool", default="user")
    ap.add_argument("--recall", type=float, default=0.95)
    ap.add_argument("--eta", type=float, default=0.05)
    ap.add_argument("--mode", default="always")
    ap.add_argument("--positions", default="4")
    ap.add_argument("--layers", default="17,18,19", help="the steered layers (the tune's layer set)")
    ap.add_argument("--cache", type=Path, default=Path("runs/gate-pools-cache-15b"))
    ap.add_argument("--out", type=Path, default=Path("runs/gate-other-model"))
    args = ap.parse_args()
    cfg = json.loads((args.tune / "tune.json").read_text())["config"]
    pairs = labelled_prompts(cfg["val_sets"])
    table, threshold = gate_logits(
        args.gate_model, args.layer, args.pool, args.recall, [p.prompt for _, p in pairs], args.cache
    )

    lm = load_model()
    bundle = EnergyBundle.load(args.bundle)
    gate = LookupGate()
    bundle.gate_on = lambda device: gate  # type: ignore[method-assign]
    bundle.gate_threshold, bundle.route_threshold = threshold, None  # two-way: flagged rows toward refusal
    encode = lm.encode

    def encode_and_look_up(prompts, system_prompt=None):
        gate.current = torch.tensor([table[p] for p in prompts])
        return encode(prompts, system_prompt)

    lm.encode = encode_and_look_up  # type: ignore[method-assign]
    positions = int(args.positions) if args.positions.isdigit() else args.positions
    layers = [int(x) for x in args.layers.split(",")]
    name = (
        f"{args.gate_model}-{args.pool}{args.layer}-r{args.recall}-eta{args.eta}-{args.mode}-p{args.positions}"
        f"-l{'_'.join(map(str, layers))}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    run = evaluate_refusals(
        lm,
        cfg["val_sets"],
        bundle=bundle,
        records_path=args.out / f"{name}.jsonl",
        label=f"val ({name})",
        prompts=pairs,
        max_new_tokens=cfg["max_new_tokens"],
        batch_size=cfg["batch_size"],
        eta=args.eta,
        steps=3,
        mode=args.mode,
        positions=positions,
        layers=layers,
        route=True,
        harm_gate=True,
    )
    base = summarise(list(read_records(args.tune / "base.jsonl").values()))
    rows = [(name, score(base, run, cfg["margin"]), run)]
    for f in sorted(args.tune.glob("*.jsonl")):  # the tune's own candidates, scored the same way
        if f.name != "base.jsonl" and f.with_suffix(".jsonl.settings.json").exists():
            steer = json.loads(f.with_suffix(".jsonl.settings.json").read_text())["steer"]
            res = summarise(list(read_records(f).values()))
            rows.append((f"{f.stem}: {steer}", score(base, res, cfg["margin"]), res))
    b = {d.name: d.refused.value for d in base.datasets}
    print(f"base: {' '.join(f'{k} {v:.1%}' for k, v in b.items())}")
    for label, s, res in rows:
        per = " ".join(f"{d.name} {d.refused.value - b[d.name]:+.1%}" for d in res.datasets)
        print(
            f"{label}\n  benign macro {s['benign_compliance_macro']:.1%}, worst harmful drop "
            f"{s['max_harmful_refusal_drop']:+.1%}, feasible {s['feasible']}\n  refusal change: {per}"
        )


if __name__ == "__main__":
    main()
