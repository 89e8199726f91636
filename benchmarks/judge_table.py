"""The judge table of docs/judge.md: every refusal judge on every human-labelled set.

    python benchmarks/judge_table.py                 # substring and jbb only (seconds)
    nice -n 10 python benchmarks/judge_table.py --llm  # adds the local-model judges (minutes on CPU)

Needs the assets (`eds fetch --assets`). LLM scores are appended to `--cache` as they are made, so an
interrupted run resumes. Prints the Markdown table and writes it, with the raw counts, to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", action="store_true", help="also score the local-model judges (default model)")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs/judge/llm_scores.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/judge/table")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the dev machine is shared)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)

    import torch

    from eds.io import write_text_atomic
    from eds.judge import get_judge
    from eds.judge_sets import builtin_sets, judge_table, to_markdown

    torch.set_num_threads(args.threads)
    sets = builtin_sets(tests_data=ROOT / "tests/data")
    judges = [get_judge("substring"), get_judge("jbb")]
    rates: dict[str, float] = {}
    if args.llm:
        from eds import load_model
        from eds.llm_judge import REFUSE_RUBRIC, AnyJudge, LLMJudge

        args.cache.parent.mkdir(parents=True, exist_ok=True)
        lm = load_model()
        llm = LLMJudge(lm=lm, cache_path=args.cache, batch_size=args.batch_size)
        asked = LLMJudge(
            lm=lm,
            rubric=REFUSE_RUBRIC,
            refusal_answer="Yes",
            threshold=0.0,
            name="llm-refuse-rubric",
            cache_path=args.cache,
            batch_size=args.batch_size,
        )
        judges += [llm, asked, AnyJudge((judges[0], llm))]
    # Model time is scarce on CPU: the LLM judges run on the reported sets only (not on the dev halves, whose
    # rule-judge rows are there to show what the phrases were chosen on), the first-specified rubric on PyRIT only.
    llm_sets = {"pyrit", "pyrit-explicit", "pyrit-off-topic", "uncensorbench-eval", "qwen05-eval"}

    def skip(judge: str, set_name: str) -> bool:
        if judge == "llm-refuse-rubric":
            return not set_name.startswith("pyrit")
        return "llm" in judge and set_name not in llm_sets

    table = judge_table(judges, sets, skip)
    if args.llm:  # replies/s of a judge that had to run the model on a whole set (not served from the cache)
        for row in table:
            if row.judge.startswith("llm") and row.seconds > 1:
                rates[f"{row.judge} on {row.set}"] = row.scores.n / row.seconds
    md = to_markdown(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out.with_suffix(".md"), md)
    payload = {"command": " ".join(sys.argv), "rows": [r.to_dict() for r in table], "replies_per_s": rates}
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(payload, indent=1))
    print(md)
    for k, v in rates.items():
        print(f"{k}: {v:.2f} replies/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
