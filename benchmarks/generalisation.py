"""Compare steering variants on validation splits: does the cut in false refusals come with a loss of
harmful refusal on sources the energy model never trained on (HarmBench), or on sources it did?

    python benchmarks/generalisation.py --collection runs/default --out runs/gen

Every variant trains on the collection (train splits) and is scored on val splits only. Records are
cached per variant under --out, so re-running resumes; results go to --out/results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from eds.bundle import EnergyBundle, SteerSettings
from eds.collect import Collection
from eds.evaluate import evaluate_refusals
from eds.models import load_model
from eds.pipeline import make_bundle
from eds.train import TrainConfig, plot_auroc

VAL_SETS = ("orbench_hard:val", "alpaca:val:40", "advbench:val:40", "donotanswer:val:40", "harmbench:val")
NEVER_TRAINED = {"harmbench"}

# name -> (train positions, harm gate, steering settings)
VARIANTS: dict[str, tuple[str, bool, SteerSettings]] = {
    "no-gate eta0.05": ("prompt", False, SteerSettings(eta=0.05, steps=3, mode="always")),
    "gate eta0.05": ("prompt", True, SteerSettings(eta=0.05, steps=3, mode="always")),
    "gate eta0.1": ("prompt", True, SteerSettings(eta=0.1, steps=3, mode="always")),
    "gate gated eta0.1": ("prompt", True, SteerSettings(eta=0.1, steps=3, mode="gated")),
    "gate all-pos eta0.05": ("all", True, SteerSettings(eta=0.05, steps=3, mode="always")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--out", default="runs/generalisation")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--gate-recall", type=float, default=0.97)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    col = Collection.open(args.collection)
    lm = load_model(col.fingerprint.name)
    col.fingerprint.check(lm.fingerprint, "collection")
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    base = evaluate_refusals(lm, VAL_SETS, max_new_tokens=args.max_new_tokens, records_path=out / "base.jsonl")
    results["base"] = {d.name: d.to_dict() for d in base.datasets}
    for name in args.variants:
        positions, gate, steering = VARIANTS[name]
        bdir = out / "bundles" / f"{positions}-gate{int(gate)}"
        try:
            bundle = EnergyBundle.load(bdir)
        except Exception:
            bundle, res = make_bundle(
                col, TrainConfig(positions=positions), steering, harm_gate=gate, gate_recall=args.gate_recall
            )
            bundle.save(bdir)
            plot_auroc(res, str(bdir / "auroc_by_layer.png"))
        print(f"== {name}: layers {bundle.layers}, gate layer {bundle.gate_layer}", flush=True)
        ev = evaluate_refusals(
            lm,
            VAL_SETS,
            bundle=bundle,
            max_new_tokens=args.max_new_tokens,
            records_path=out / f"{name.replace(' ', '_')}.jsonl",
            **asdict(steering),
        )
        results[name] = {d.name: d.to_dict() for d in ev.datasets} | {
            "_bundle": {"layers": bundle.layers, "gate_layer": bundle.gate_layer, "gate": bundle.gate_metrics}
        }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"Val splits, default model, {args.max_new_tokens} new tokens; refusal rate (95% Wilson interval). "
        f"HarmBench was never trained on. Command: `python benchmarks/generalisation.py --collection "
        f"{args.collection} --out {args.out}`",
        "",
    ]
    names = [d for d in results["base"]]
    lines.append("| variant | " + " | ".join(names) + " | repetition |")
    lines.append("|---" * (len(names) + 2) + "|")
    for variant, per in results.items():
        cells = []
        for d in names:
            r = per[d]["refusal_rate"]
            cells.append(f"{r['rate']:.1%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]")
        rep = sum(per[d]["repetition_rate"]["k"] for d in names) / sum(per[d]["n"] for d in names)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {rep:.1%} |")
    lines.append("")
    lines.append(f"({time.perf_counter() - t0:.0f} s)")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
