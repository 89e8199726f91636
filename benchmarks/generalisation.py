"""Compare steering variants on validation splits: does the cut in false refusals come with a loss of
harmful refusal on sources the energy model never trained on (HarmBench), or on sources it did?

    python benchmarks/generalisation.py --collection runs/default --out runs/gen

Every variant trains on the collection (train splits) and is scored on val splits only. Records are
cached per variant under --out, so re-running resumes; results go to --out/results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from eds.bundle import EnergyBundle, SteerSettings
from eds.collect import Collection
from eds.evaluate import evaluate_refusals
from eds.models import load_model
from eds.pipeline import make_bundle
from eds.suite import REFUSAL_SETS
from eds.train import TrainConfig, plot_auroc

VAL_SETS = ("orbench_hard:val", "alpaca:val:40", "advbench:val:40", "donotanswer:val:40", "harmbench:val")
#: The full test splits, for the final comparison only (never for choosing anything): the same as `eds eval`'s.
TEST_SETS = REFUSAL_SETS

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
    ap.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="val: compare variants (choices are made here); test: the held-out report",
    )
    ap.add_argument("--sets", nargs="+", help="prompt-set specs instead of the split's defaults")
    ap.add_argument("--base-only", action="store_true", help="evaluate the unsteered model only")
    ap.add_argument("--skip-base", action="store_true", help="variants only (the base runs elsewhere)")
    ap.add_argument(
        "--report",
        nargs="+",
        metavar="NAME=RECORDS.jsonl",
        help="generate nothing: tabulate finished records files (the first is the baseline)",
    )
    args = ap.parse_args()
    sets = tuple(args.sets) if args.sets else (VAL_SETS if args.split == "val" else TEST_SETS)
    if args.report:
        report_only(args, sets)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    col = Collection.open(args.collection)
    lm = load_model(col.fingerprint.name)
    col.fingerprint.check(lm.fingerprint, "collection")
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    if not args.skip_base:
        base = evaluate_refusals(lm, sets, max_new_tokens=args.max_new_tokens, records_path=out / "base.jsonl")
        results["base"] = {d.name: d.to_dict() for d in base.datasets}
    for name in [] if args.base_only else args.variants:
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
            sets,
            bundle=bundle,
            max_new_tokens=args.max_new_tokens,
            records_path=out / f"{name.replace(' ', '_')}.jsonl",
            **asdict(steering),
        )
        results[name] = {d.name: d.to_dict() for d in ev.datasets} | {
            "_bundle": {"layers": bundle.layers, "gate_layer": bundle.gate_layer, "gate": bundle.gate_metrics}
        }
    write_tables(results, args, out, time.perf_counter() - t0)


def report_only(args: argparse.Namespace, sets: tuple[str, ...]) -> None:
    """Tables from finished records files (e.g. a base and a steered run made in separate processes)."""
    from eds import data
    from eds.evaluate import summarise

    plan = [p.key for spec in sets for p in data.load(spec)]

    results: dict[str, dict] = {}
    for item in args.report:
        name, _, path = item.partition("=")
        by_key = {}
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                by_key[r["key"]] = r
        missing = [k for k in plan if k not in by_key]
        if missing:
            raise SystemExit(f"{path} lacks {len(missing)} prompts of the plan (e.g. {missing[0]}): finish it first")
        # only the plan's prompts, in the plan's order: every variant is compared on the same prompts
        results[name] = {d.name: d.to_dict() for d in summarise([by_key[k] for k in plan]).datasets}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(results, args, out, 0.0)


def write_tables(results: dict[str, dict], args: argparse.Namespace, out: Path, seconds: float) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1))
    command = " ".join(["python benchmarks/generalisation.py", *(f'"{a}"' if " " in a else a for a in sys.argv[1:])])
    lines = [
        f"{args.split} splits, default model, {args.max_new_tokens} new tokens; refusal rate (95% Wilson interval). "
        f"The energy models trained on AdvBench, Do-Not-Answer, ORB-H and Alpaca train splits only. "
        f"Command: `{command}`",
        "",
    ]
    names = [d for d in next(iter(results.values())) if not d.startswith("_")]
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
    if seconds:
        lines.append(f"({seconds:.0f} s)")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
