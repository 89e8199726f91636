"""Side by side: several `eds eval` results (result.json) as one Markdown table.

The base column comes from the first result; each result adds its steered column. Rows: refusal per
dataset (refusal and robustness sections) with 95% intervals for the first, repetition, MMLU,
HumanEval and drift where present. It reads numbers only; nothing is recomputed.

Run from the repository root, e.g.
    python scripts/compare_evals.py runs/eval6/result.json runs/eval5/result.json --name fourth --name third
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _rate(r: dict[str, Any] | None, ci: bool) -> str:
    if not r:
        return "–"
    s = f"{r['rate']:.1%}"
    return f"{s} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]" if ci else s


def _by_dataset(section: dict[str, Any] | None, arm: str) -> dict[str, dict[str, Any]]:
    if not section or arm not in section:
        return {}
    return {d["dataset"]: d for d in section[arm]["datasets"]}


def _repetition(section: dict[str, Any] | None, arm: str) -> str:
    """Share of replies repeating a 4-gram three times, pooled over the section's datasets."""
    ds = _by_dataset(section, arm).values()
    k, n = sum(d["repetition_rate"]["k"] for d in ds), sum(d["repetition_rate"]["n"] for d in ds)
    return f"{k / n:.1%}" if n else "–"


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows: what, n, base, then one steered column per result."""
    first = results[0]["sections"]
    out = []
    for part in ("refusal", "robustness"):
        base = _by_dataset(first.get(part), "base")
        for name, d in base.items():
            should = "refuse" if d["label"] == "harmful" else "answer"
            cells = [f"{name} ({should})", str(d["n"]), _rate(d["refusal_rate"], True)]
            for i, res in enumerate(results):
                s = _by_dataset(res["sections"].get(part), "steered").get(name)
                cells.append(_rate(s["refusal_rate"] if s else None, i == 0))
            out.append(cells)
    out.append(
        [
            "repetition (4-gram ×3), refusal sets",
            str(sum(d["n"] for d in _by_dataset(first.get("refusal"), "base").values())),
            _repetition(first.get("refusal"), "base"),
            *(_repetition(res["sections"].get("refusal"), "steered") for res in results),
        ]
    )
    for part, key, label in (("mmlu", "accuracy", "MMLU accuracy"), ("humaneval", "pass_at_1", "HumanEval pass@1")):
        sec = first.get(part)
        if not sec:
            continue
        cells = [label, str(sec["base"][key]["n"]), _rate(sec["base"][key], True)]
        for i, res in enumerate(results):
            s = res["sections"].get(part, {}).get("steered")
            cells.append(_rate(s[key] if s else None, i == 0))
        out.append(cells)
    drift = [res["sections"].get("drift", {}).get("steered") for res in results]
    if any(drift):
        n = str(next(d["n"] for d in drift if d))
        out.append(["drift: mean KL, nats per token", n, "", *(f"{d['mean_kl']:.3f}" if d else "–" for d in drift)])
        out.append(["drift: replies unchanged", n, "", *(f"{d['unchanged_share']:.0%}" if d else "–" for d in drift)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="result.json files; the first gives the base column")
    ap.add_argument("--name", action="append", default=[], help="a column name per result (default: its folder)")
    args = ap.parse_args()
    results = [json.loads(p.read_text(encoding="utf-8")) for p in args.results]
    names = args.name or [p.parent.name for p in args.results]
    if len(names) != len(results):
        raise SystemExit(f"{len(names)} --name for {len(results)} results")
    head = ["", "n", "base", *names]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows(results):
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
