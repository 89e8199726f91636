"""Human-labelled refusal sets, read into the rows `judge_scores` takes, and a table of every judge on every set.

Rows are dicts with `id`, `prompt`, `response`, `refused` (the human label, refusal = True) and `kind`:
`comply`, `refuse` (the reply says, or shows in character, that it will not do the task, or lectures instead),
or `off_topic` (PyRIT only: the reply neither refuses nor does the task; it answers another request or talks
around this one, and PyRIT's labellers count it as a refusal). Bad input is an error naming the file and line.
The third-party files themselves are fetched by `eds.assets`, never committed.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import DataError
from .io import jsonl_objects, sha256_file
from .judge import Judge, JudgeScores, judge_scores
from .metrics import Rate

PYRIT_FILES = (
    "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
    "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
)


def _rows(spans: Sequence[tuple[int, int]]) -> frozenset[int]:
    return frozenset(i for a, b in spans for i in range(a, b + 1))


#: The off-topic rows of PyRIT 1.1.0's refusal evaluation files, decided by reading every human_score=1 row
#: (data rows numbered from 0, comment and header lines not counted). Keyed by each file's pinned sha256, so
#: the decision is only applied to exactly the file it was made on.
#:  refusal.csv 58-67 and refusal_extra.csv 32-61: answers to other requests of the same file (swapped replies);
#:  refusal.csv 68-69: a "character's plan" for producing the asked-for text, which never produces it;
#:  refusal.csv 71: a usage string ("GUIDE: Type @:complex(...)") instead of the essay.
#: Every other human_score=1 row states or shows a refusal (or lectures instead), and is `refuse`.
PYRIT_OFF_TOPIC: dict[str, frozenset[int]] = {
    "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7": _rows([(58, 69), (71, 71)]),
    "6ce7f61a8205eb8c29b1a247b52b3730501349f9adf0674a696efb004658a18a": _rows([(32, 61)]),
}

_PYRIT_COLUMNS = ("objective", "assistant_response", "human_score")


def load_pyrit_refusal(path: str | Path, off_topic: frozenset[int] | None = None) -> list[dict[str, Any]]:
    """One PyRIT refusal-scorer CSV (leading `#` comment lines, then objective, assistant_response, human_score).

    `off_topic` names the data rows (from 0) that are refusals only because the reply ignores the objective;
    by default the built-in reading of the pinned file is used (none for another file)."""
    path = Path(path)
    if off_topic is None:
        off_topic = PYRIT_OFF_TOPIC.get(sha256_file(path), frozenset())
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    lines = text.splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and lines[skip].lstrip().startswith("#"):
        skip += 1
    reader = csv.DictReader(io.StringIO("".join(lines[skip:]), newline=""))
    missing = [c for c in _PYRIT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}, line {skip + 1}: missing column(s) {', '.join(missing)} (got {reader.fieldnames})")
    rows: list[dict[str, Any]] = []
    start = reader.line_num + 1
    for i, rec in enumerate(reader):
        where = f"{path}, line {skip + start}"
        start = reader.line_num + 1
        if None in rec or any(rec.get(c) is None for c in _PYRIT_COLUMNS):
            raise DataError(f"{where}: expected {len(reader.fieldnames or [])} fields")
        score = rec["human_score"].strip()
        if score not in ("0", "1"):
            raise DataError(f"{where}: human_score must be 0 or 1, got {score!r}")
        refused = score == "1"
        kind = ("off_topic" if i in off_topic else "refuse") if refused else "comply"
        if i in off_topic and not refused:
            raise DataError(f"{where}: row {i} is listed as off-topic but labelled human_score 0")
        rows.append(
            {
                "id": f"{path.name}:{i}",
                "prompt": rec["objective"],
                "response": rec["assistant_response"],
                "refused": refused,
                "kind": kind,
            }
        )
    return rows


def load_uncensorbench(path: str | Path) -> list[dict[str, Any]]:
    """uncensorbench's prompts.json: each prompt gives a refusing (`censored_response`) and a complying
    (`uncensored_response`) reply, so 2 labelled rows per prompt."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
    items = obj.get("prompts") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected an object with a `prompts` list")
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"{path}, prompts[{i}]" + (f" (id {item.get('id')!r})" if isinstance(item, dict) else "")
        if not isinstance(item, dict):
            raise DataError(f"{where}: not an object")
        for key in ("prompt", "censored_response", "uncensored_response"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise DataError(f"{where}: needs a non-empty string `{key}`")
        pid = str(item.get("id", i))
        for key, refused in (("censored_response", True), ("uncensored_response", False)):
            rows.append(
                {
                    "id": f"{pid}:{'refuse' if refused else 'comply'}",
                    "prompt": item["prompt"],
                    "response": item[key],
                    "refused": refused,
                    "kind": "refuse" if refused else "comply",
                }
            )
    return rows


def load_labelled_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """eds's own format (`eds judge-eval`): one JSON object a line with `response` and boolean `refused`."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    try:
        objects = list(jsonl_objects(path, DataError))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    for n, where, obj in objects:
        if not isinstance(obj.get("response"), str):
            raise DataError(f"{where}: needs a string `response`")
        if not isinstance(obj.get("refused"), bool):
            raise DataError(f"{where}: needs a boolean `refused`")
        kind = obj.get("kind") or ("refuse" if obj["refused"] else "comply")
        rows.append({"id": obj.get("id", f"{path.name}:{n}"), "prompt": obj.get("prompt", ""), **obj, "kind": kind})
    return rows


def split_halves(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A fixed dev/eval split by prompt (the id before ':'), so both replies to one prompt fall on one side:
    phrases may be chosen on dev, numbers reported on eval. Decided by a hash, not by order or content."""
    import hashlib

    dev, ev = [], []
    for r in rows:
        group = str(r["id"]).split(":")[0]
        (dev if hashlib.sha256(group.encode()).digest()[0] % 2 == 0 else ev).append(r)
    return dev, ev


def pyrit_rows(download: bool = False) -> list[dict[str, Any]]:
    """Both PyRIT files (169 rows), from the asset cache."""
    from . import assets

    return [
        r for f in PYRIT_FILES for r in load_pyrit_refusal(assets.path("pyrit-refusal-evals", f, download=download))
    ]


def builtin_sets(download: bool = False, *, tests_data: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The labelled sets of the judge table, by name. Assets must be fetched (`eds fetch --assets`) unless
    `download`; the default model's own hand-labelled replies are read from `tests_data` if given."""
    from . import assets

    pyrit = pyrit_rows(download)
    sets = {
        "pyrit": pyrit,
        "pyrit-explicit": [r for r in pyrit if r["kind"] != "off_topic"],
        "pyrit-off-topic": [r for r in pyrit if r["kind"] == "off_topic"],
        "uncensorbench": load_uncensorbench(assets.path("uncensorbench", download=download)),
    }
    sets["uncensorbench-dev"], sets["uncensorbench-eval"] = split_halves(sets["uncensorbench"])
    if tests_data is not None:
        sets["qwen05-eval"] = load_labelled_jsonl(Path(tests_data) / "judge_eval_qwen05.jsonl")
        sets["qwen05-dev"] = load_labelled_jsonl(Path(tests_data) / "judge_dev_qwen05.jsonl")
    return sets


@dataclass(frozen=True)
class TableRow:
    """One judge on one labelled set."""

    set: str
    judge: str
    scores: JudgeScores
    seconds: float

    @property
    def positives(self) -> int:
        return self.scores.tp + self.scores.fn

    def to_dict(self) -> dict[str, Any]:
        s = self.scores
        return {
            "set": self.set,
            "judge": self.judge,
            "n": s.n,
            "refusals": self.positives,
            "tp": s.tp,
            "fp": s.fp,
            "fn": s.fn,
            "tn": s.tn,
            "precision": s.precision.to_dict(),
            "recall": s.recall.to_dict(),
            "accuracy": s.accuracy.to_dict(),
            "seconds": self.seconds,
        }


def judge_table(
    judges: Sequence[Judge],
    sets: Mapping[str, Sequence[dict[str, Any]]],
    skip: Callable[[str, str], bool] | None = None,
) -> list[TableRow]:
    """Every judge on every set, set by set, except where `skip(judge_name, set_name)`; `seconds` is the
    judge's wall time on that set (for slow judges, to spend model time only where it tells something)."""
    table = []
    for set_name, rows in sets.items():
        for judge in judges:
            if skip is not None and skip(getattr(judge, "name", ""), set_name):
                continue
            t = time.perf_counter()
            s = judge_scores(judge, rows)
            table.append(TableRow(set_name, s.judge, s, time.perf_counter() - t))
    return table


def _pct(r: Rate, with_ci: bool) -> str:
    if not r.n:
        return "—"
    if not with_ci:
        return f"{r.value:.1%} ({r.k}/{r.n})"
    lo, hi = r.ci
    return f"{r.value:.1%} [{lo:.1%}, {hi:.1%}] ({r.k}/{r.n})"


def to_markdown(
    table: Sequence[TableRow], *, with_ci: bool = True, notes: Callable[[TableRow], str] | None = None
) -> str:
    """The table as Markdown: precision and recall with 95% Wilson intervals (— where undefined)."""
    head = "| set | judge | n | refusals | precision | recall | accuracy |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for row in table:
        s = row.scores
        # Precision is undefined without judged refusals, and says nothing on a set with no negatives.
        prec = s.precision if s.tp + s.fp and s.fp + s.tn else Rate(0, 0)
        cells = [row.set, row.judge, str(s.n), str(row.positives)]
        cells += [_pct(prec, with_ci), _pct(s.recall, with_ci), _pct(s.accuracy, False)]
        if notes is not None:
            cells[-1] += notes(row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
