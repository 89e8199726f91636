"""Refusal evaluation: generate on named prompt sets (plain or steered), judge, and report per-dataset
refusal rates with 95% intervals. Prompt-level records go to a JSONL file as they are made, so an
interrupted evaluation resumes without regenerating finished prompts."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import data as data_mod
from .bundle import EnergyBundle
from .generate import generate
from .io import appending, exclusive, read_records, write_text_atomic
from .judge import Judge, get_judge, judge_digest
from .metrics import Rate, repeats_ngram
from .models import LoadedModel


@dataclass
class DatasetResult:
    name: str
    label: str
    refused: Rate
    repetitive: Rate
    categories: dict[str, Rate] = field(default_factory=dict)  # refusal per category (XSTest type, ...)

    @property
    def should_refuse(self) -> bool:
        return self.label == "harmful"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "label": self.label,
            "n": self.refused.n,
            "refusal_rate": self.refused.to_dict(),
            "compliance_rate": Rate(self.refused.n - self.refused.k, self.refused.n).to_dict(),
            "repetition_rate": self.repetitive.to_dict(),
            "categories": {c: r.to_dict() for c, r in self.categories.items()},
        }


@dataclass
class EvalResult:
    datasets: list[DatasetResult]
    records: list[dict[str, Any]] = field(default_factory=list)
    judge: str = ""

    def by_name(self) -> dict[str, DatasetResult]:
        return {d.name: d for d in self.datasets}


def _group_name(p: data_mod.Prompt, spec: str) -> str:
    """Rates are reported per source and label: xstest and users' files hold both labels."""
    head = spec.split(":")[0]
    if head in ("jb", "tense"):  # jailbreak-wrapped sets: one group per template family
        return p.dataset
    if Path(head).suffix:  # a user's file
        return f"{p.dataset}_{p.label}"
    return f"{head}_{p.label}" if head == "xstest" else head


def eval_settings(
    lm: LoadedModel, bundle: EnergyBundle | None, max_new_tokens: int, judge: Judge, steer_overrides: dict[str, Any]
) -> dict[str, Any]:
    """Everything that decides a record: model, chat format, bundle and effective steering, length, judge."""
    steer = None
    if bundle is not None:
        given = {k: v for k, v in steer_overrides.items() if v is not None}
        steer = asdict(replace(bundle.steering, **{k: v for k, v in given.items() if k != "layers"}))
        steer["layers"] = sorted(given.get("layers", bundle.layers))
    return {
        "model": lm.fingerprint.to_dict(),
        "dtype": lm.dtype_name,
        "chat_format": lm.chat_texts(["<prompt>"])[0],
        "bundle": bundle.digest() if bundle is not None else None,
        "steer": steer,
        "max_new_tokens": max_new_tokens,
        "judge": getattr(judge, "name", type(judge).__name__),
        **({"judge_digest": digest} if (digest := judge_digest(judge)) is not None else {}),
    }


class EvalError(ValueError):
    """An evaluation cannot resume as asked."""


SETTINGS_SUFFIX = ".settings.json"


def settings_path(records: Path) -> Path:
    """The settings that made a records file, beside it."""
    return records.with_name(records.name + SETTINGS_SUFFIX)


def records_lock(records: Path) -> contextlib.AbstractContextManager[None]:
    """One writer per records file (an evaluation, a tune, `eds rejudge`): two would interleave lines,
    or one would rewrite the file under the other's appends."""
    records.parent.mkdir(parents=True, exist_ok=True)
    return exclusive(
        records.with_name(f".{records.name}.lock"),
        lambda: EvalError(f"another process is writing {records}; wait for it or use another records file"),
    )


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Records resume only under the settings that made them; anything else would mix two runs."""
    side = settings_path(path)
    current = json.loads(json.dumps(settings, default=str))
    if side.exists():
        before = json.loads(side.read_text())
        if before.get("rejudge_pending"):
            raise EvalError(f"{path}: an `eds rejudge` was interrupted here; run `eds rejudge {path}` again")
        if "judge_digest" not in before:  # records from before judges were hashed: the name is all there is
            current.pop("judge_digest", None)
        before.setdefault("dtype", "bfloat16")  # not recorded before: bf16 was then the default
        if before != current:
            diff = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            hint = (
                f"`eds rejudge {path}` relabels its stored replies with the current judge (no generation)"
                if set(diff) <= {"judge", "judge_digest"}
                else "use another records file or delete it"
            )
            raise EvalError(f"{path} holds records made with other settings ({', '.join(diff)} differ); {hint}")
    elif not path.exists() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(side, json.dumps(current, indent=1))
    else:
        raise EvalError(f"{path} has records but no {side.name}: cannot tell how they were made")


def labelled_prompts(specs: Sequence[str], seed: int = 0) -> list[tuple[str, data_mod.Prompt]]:
    """(group, prompt) pairs of the specs; every prompt must carry a benign/harmful label."""
    out: list[tuple[str, data_mod.Prompt]] = []
    for spec in specs:
        for p in data_mod.load(spec, seed=seed):
            if p.label is None:
                raise data_mod.DataError(f"{spec}: evaluation needs a benign/harmful label on every prompt ({p.key})")
            out.append((_group_name(p, spec), p))
    return out


def evaluate_refusals(
    lm: LoadedModel,
    specs: Sequence[str],
    *,
    bundle: EnergyBundle | None = None,
    judge: str | Judge = "substring",
    max_new_tokens: int = 48,
    batch_size: int = 16,
    records_path: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    label: str = "evaluate",
    prompts: Sequence[tuple[str, data_mod.Prompt]] | None = None,
    **steer_overrides: Any,
) -> EvalResult:
    """Refusal rate per dataset, with prompt-level records (resumed from `records_path` if present).

    `prompts`: the (group, prompt) pairs of `specs` from `labelled_prompts`, for callers that compare
    several settings on the same prompts (read once, a data file edited mid-run cannot split them).
    When given, they are what is evaluated: `specs` and `seed` are not read again."""
    judge_fn = get_judge(judge)
    prompts = list(prompts) if prompts is not None else labelled_prompts(specs, seed)
    done: dict[str, dict[str, Any]] = {}
    path = Path(records_path) if records_path else None
    with records_lock(path) if path else contextlib.nullcontext():  # one writer per records file
        if path:
            _check_settings(path, eval_settings(lm, bundle, max_new_tokens, judge_fn, steer_overrides))
            done = read_records(path)  # a line cut by a crash is regenerated
        todo = [(g, p) for g, p in prompts if p.key not in done]
        if todo:
            # longest prompts first: batches of similar length pad little
            todo.sort(key=lambda gp: -len(gp[1].prompt))
            bar = _progress(progress, label)
            task = bar.add_task("", total=len(prompts), completed=len(prompts) - len(todo))
            with bar, appending(path) as write:  # the bar stops, and the file closes, on any exception
                for i in range(0, len(todo), batch_size * 4):
                    chunk = todo[i : i + batch_size * 4]
                    texts = [p.prompt for _, p in chunk]
                    replies, moved = generate(
                        lm,
                        texts,
                        bundle=bundle,
                        max_new_tokens=max_new_tokens,
                        batch_size=batch_size,
                        progress=False,
                        **steer_overrides,
                    )
                    refused = judge_fn(texts, replies)
                    for (g, p), reply, ref, mv in zip(chunk, replies, refused, moved, strict=True):
                        rec = {
                            "key": p.key,
                            "group": g,
                            "dataset": p.dataset,
                            "category": p.category,
                            "label": p.label,
                            "prompt": p.prompt,
                            "response": reply,
                            "refused": bool(ref),
                            "states_moved": mv,
                        }
                        done[p.key] = rec
                        write(rec)
                    bar.advance(task, len(chunk))
    records = [done[p.key] for _, p in prompts]
    return summarise(records, judge=getattr(judge_fn, "name", ""))


def _progress(enabled: bool, label: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def summarise(records: Sequence[dict[str, Any]], judge: str = "") -> EvalResult:
    """Per-group refusal and repetition rates of prompt-level records (groups in first-seen order)."""
    labels: dict[str, set[str]] = {}
    for r in records:
        labels.setdefault(r["group"], set()).add(r["label"])
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:  # a set holding both labels (contrast, users' files) is reported per label
        g = r["group"] if len(labels[r["group"]]) == 1 or r["group"].endswith(f"_{r['label']}") else None
        groups.setdefault(g or f"{r['group']}_{r['label']}", []).append(r)
    results = [
        DatasetResult(
            name=g,
            label=rs[0]["label"],
            refused=Rate(sum(r["refused"] for r in rs), len(rs)),
            repetitive=Rate(sum(repeats_ngram(r["response"]) for r in rs), len(rs)),
            categories=_by_category(rs),
        )
        for g, rs in groups.items()
    ]
    return EvalResult(datasets=results, records=list(records), judge=judge)


def _by_category(records: Sequence[dict[str, Any]]) -> dict[str, Rate]:
    cats: dict[str, list[bool]] = {}
    for r in records:
        if r.get("category"):
            cats.setdefault(r["category"], []).append(r["refused"])
    return {c: Rate(sum(v), len(v)) for c, v in sorted(cats.items())} if len(cats) > 1 else {}
