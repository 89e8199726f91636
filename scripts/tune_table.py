"""Tune candidates side by side: each candidate's records rescored against the base records by the
tune's own rule (`eds.tune.score`), one column each, as a Markdown table of refusal changes per
source. Candidates of different `eds tune` runs that share a base (same `--out`) compare directly.

    python scripts/tune_table.py --base runs/tune-b7/base.jsonl \
        --run "seventh, 99% / 95%=runs/tune-b7/0436ce3e23-5f1f0981.jsonl" \
        --run "1.5B, 97% / 95%=runs/tune-b7/eb7776848c-76b77155.jsonl"

`runs/<tune>/tune*.json` name each candidate's records file.
"""

from __future__ import annotations

import argparse

from eds.evaluate import summarise
from eds.io import read_records
from eds.tune import score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the tune's base.jsonl")
    ap.add_argument("--run", action="append", required=True, help="NAME=records.jsonl (repeatable)")
    ap.add_argument("--margin", type=float, default=0.01, help="the tune's margin (default 0.01)")
    args = ap.parse_args()
    records = {}
    for spec in args.run:
        name, sep, path = spec.rpartition("=")
        if not sep:
            ap.error(f"--run {spec!r}: write NAME=records.jsonl")
        records[name] = read_records(path)
    base_rows = read_records(args.base)
    # A val set that grew between runs (tense_val gained rows) would compare rates over different prompts:
    # every column, the base included, counts only the prompts that every run has.
    common = set(base_rows).intersection(*records.values())
    if len(common) < len(base_rows):
        print(f"(the {len(common)} of the base's {len(base_rows)} prompts that every run has)\n")
    base = summarise([base_rows[k] for k in sorted(common)])
    before = {d.name: d.refused.value for d in base.datasets}
    runs = {
        name: score(base, summarise([rows[k] for k in sorted(common)]), args.margin) for name, rows in records.items()
    }
    print("| refusal change, points | base | " + " | ".join(runs) + " |")
    print("|---" * (len(runs) + 2) + "|")
    for src, b in sorted(before.items()):
        cells = [f"{100 * (r['refusal'][src] - b):+.1f}" if src in r["refusal"] else "" for r in runs.values()]
        print(f"| {src} | {b:.1%} | " + " | ".join(cells) + " |")
    rows = [
        ("mean benign compliance", lambda r: f"{r['benign_compliance_macro']:.1%}"),
        ("worst harmful drop", lambda r: f"{100 * r['max_harmful_refusal_drop']:+.1f}"),
        ("the rule", lambda r: "kept" if r["feasible"] else "refused"),
    ]
    for label, cell in rows:
        print(f"| {label} | | " + " | ".join(cell(r) for r in runs.values()) + " |")


if __name__ == "__main__":
    main()
