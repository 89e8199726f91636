"""How much of a steered model's refusal comes from its harmfulness gate.

With routing, rows the gate flags are steered toward refusal and the others toward answering, so a
benign prompt the gate flags is almost always refused. This reads an `eds eval` (or `eds tune`)
records file of steered replies, runs the bundle's gate on each prompt (one forward up to the gate
layer) at the gate threshold saved in the bundle, and prints, per group: how many rows the gate
flags, and how many of the refused rows were flagged or passed. Use records made with the bundle as
saved (an `eds tune` candidate with another gate recall used another threshold).

Run from the repository root, e.g.
    python scripts/gate_flags.py --bundle runs/v5/bundle-wide \
        --records runs/eval5/records/refusal-steered.jsonl --group oktest --group xstest_benign
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from eds import EnergyBundle, load_model
from eds.io import read_records
from eds.probe import gate_states


def trained_system_prompt(bundle: EnergyBundle) -> str | None:
    """The system prompt the bundle's collections were made with (None: the model's default): the gate
    read its training states under it, so it reads prompts under it here too."""
    configs = bundle.data_summary.get("collect_config")
    configs = configs if isinstance(configs, list) else [configs]
    prompts = {(c or {}).get("system_prompt") for c in configs}
    if len(prompts) > 1:
        raise SystemExit(f"the bundle's collections were made with different system prompts: {prompts}")
    return prompts.pop() if prompts else None


def gate_logits(lm, bundle: EnergyBundle, prompts: list[str], batch_size: int = 16) -> list[float]:
    """The gate's harmfulness logit of each prompt (its states entering the gate layer, pooled as the gate
    pools them while steering; a bundle with a gate model reads that model's states, loaded as steering
    loads it)."""
    if bundle.gate is None or bundle.gate_layer is None:
        raise SystemExit("this bundle has no harmfulness gate")
    reader = lm if bundle.gate_reader is None else bundle.gate_model_for(lm)
    probe = bundle.gate_on(reader.device)
    states = gate_states(
        reader,
        prompts,
        [bundle.gate_layer],
        probe.pool,
        system_prompt=trained_system_prompt(bundle),
        encoder=lm,
        batch_size=batch_size,
        progress=False,
    )
    with torch.no_grad():
        return probe(states[bundle.gate_layer].to(reader.device)).tolist()


def val_table(columns: list[tuple[str, list[bool]]], sources: dict[tuple[str, str], list[int]]) -> None:
    """Print per val source (label, group) the share of harmful prompts each column flags and of benign
    prompts it passes, then the mean over sources, as a markdown table."""
    print("| val source | n | " + " | ".join(c for c, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for label, flagged in (("harmful", True), ("benign", False)):
        keys = sorted(k for k in sources if k[0] == label)
        for key in keys:
            idx = sources[key]
            cells = [f"{sum(f[i] == flagged for i in idx) / len(idx):.0%}" for _, f in columns]
            print(f"| {key[1]} ({'flagged' if flagged else 'passed'}) | {len(idx)} | " + " | ".join(cells) + " |")
        mean = [
            sum(sum(f[i] == flagged for i in sources[k]) / len(sources[k]) for k in keys) / len(keys)
            for _, f in columns
        ]
        print(
            f"| **{label} {'flagged' if flagged else 'passed'}, mean over sources** | | "
            + " | ".join(f"**{m:.1%}**" for m in mean)
            + " |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--records", required=True, type=Path, help="steered records (.jsonl) of eds eval or eds tune")
    ap.add_argument("--group", action="append", help="groups to report (default: all)")
    ap.add_argument("--model", default=None, help="default: the bundle's model")
    ap.add_argument(
        "--base", type=Path, default=None, help="base records of the same prompts: adds base refusals per side"
    )
    ap.add_argument("--logits", type=Path, default=None, help="write each row's gate logit here (JSONL)")
    args = ap.parse_args()
    bundle = EnergyBundle.load(args.bundle)
    lm = load_model(args.model or bundle.fingerprint.name)
    bundle.check(lm)
    rows = [r for r in read_records(args.records).values() if not args.group or r["group"] in args.group]
    base = read_records(args.base) if args.base else {}
    logits = gate_logits(lm, bundle, [r["prompt"] for r in rows])
    if args.logits:
        with args.logits.open("w") as f:
            for r, logit in zip(rows, logits, strict=True):
                f.write(json.dumps({"key": r["key"], "group": r["group"], "label": r["label"], "logit": logit}) + "\n")
    counts: dict[str, Counter] = {}
    for r, logit in zip(rows, logits, strict=True):
        c = counts.setdefault(r["group"], Counter())
        flagged = logit > bundle.gate_threshold
        c["rows"] += 1
        c["flagged"] += flagged
        c["refused, flagged"] += r["refused"] and flagged
        c["refused, passed"] += r["refused"] and not flagged
        if base:
            b = base[r["key"]]["refused"]
            c["base refused, flagged"] += b and flagged
            c["base refused, passed"] += b and not flagged
    print(f"gate: layer {bundle.gate_layer}, threshold {bundle.gate_threshold:.3f}")
    for group, c in sorted(counts.items()):
        passed = c["rows"] - c["flagged"]
        # What the group's steered refusal rate would be if the flagged rows were refused as often as the
        # passed ones: a gate that passed all of them, and optimistic, as flagged rows sound more harmful.
        bound = c["refused, passed"] / passed if passed else float("nan")
        print(json.dumps({"group": group, **c, "refused if all passed (passed rows' rate)": round(bound, 3)}))


if __name__ == "__main__":
    main()
