"""Prompt sets: the shipped benchmarks (by name and split) and users' own files, validated.

A spec names what to load: `orbench_hard:train`, `xstest:test`, `alpaca:train:250` (a seeded
sample of 250), `advbench` (all splits), or a path to a .jsonl/.json/.csv file (optionally
`my.jsonl:100`). Every row must have a non-empty prompt; a label, if present, is benign or harmful.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .io import jsonl_objects

LABELS = ("benign", "harmful")
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A prompt file or spec is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    """One prompt with what we know about it. `label` is None for unlabelled user data."""

    id: str
    prompt: str
    label: str | None
    dataset: str
    category: str = ""
    split: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """Unique across datasets: used to resume collections and evaluations."""
        return f"{self.dataset}/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def builtin_names() -> list[str]:
    files = resources.files("eds") / "datasets"
    return sorted(p.name[: -len(".jsonl")] for p in files.iterdir() if p.name.endswith(".jsonl"))


def _builtin_path(name: str) -> Path:
    path = resources.files("eds") / "datasets" / f"{name}.jsonl"
    if not path.is_file():
        raise DataError(f"unknown dataset {name!r}; shipped sets: {', '.join(builtin_names())}")
    return Path(str(path))


def _row(obj: Any, where: str, dataset: str, fallback_id: str) -> Prompt:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object with a 'prompt' field, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise DataError(f"{where}: missing field 'prompt' (fields present: {', '.join(map(str, obj)) or 'none'})")
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: empty prompt")
    label = obj.get("label")
    if label in ("", None):
        label = None
    elif label not in LABELS:
        raise DataError(f"{where}: unknown label {label!r} (use one of {', '.join(LABELS)})")
    split = obj.get("split") or ""
    if split and split not in SPLITS:
        raise DataError(f"{where}: unknown split {split!r} (use one of {', '.join(SPLITS)})")
    known = {"id", "prompt", "label", "category", "split"}
    return Prompt(
        id=str(obj.get("id") or fallback_id),
        prompt=prompt,
        label=label,
        dataset=dataset,
        category=str(obj.get("category") or ""),
        split=split,
        extra={k: v for k, v in obj.items() if k not in known},
    )


def read_file(path: str | Path, dataset: str | None = None) -> list[Prompt]:
    """Read and validate a JSONL, JSON (a list of objects) or CSV prompt file."""
    path = Path(path)
    name = dataset or path.stem
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    rows: list[Prompt] = []
    if suffix == ".jsonl":
        for n, where, obj in jsonl_objects(path, DataError):
            rows.append(_row(obj, where, name, f"{name}-{n}"))
    elif suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(data, dict):  # {"prompts": [...]} or {"data": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path}: expected a list of objects, or an object holding one list")
            data = lists[0]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of objects")
        for i, obj in enumerate(data):
            rows.append(_row(obj, f"{path}, item {i} (0-based)", name, f"{name}-{i}"))
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise DataError(f"{path}, line 1: no 'prompt' column (columns: {reader.fieldnames})")
            for obj in reader:
                rows.append(_row(obj, f"{path}, line {reader.line_num}", name, f"{name}-{reader.line_num}"))
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .csv)")
    if not rows:
        raise DataError(f"{path}: no prompts")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r.id in seen:
            raise DataError(f"{path}: duplicate id {r.id!r} (rows {seen[r.id] + 1} and {i + 1})")
        seen[r.id] = i
    return rows


def load(spec: str, *, seed: int = 0) -> list[Prompt]:
    """Load prompts by spec: `name[:split][:n]` for shipped sets, `path[:n]` for files, and jailbreak-wrapped
    sets `jb:FAMILY:BASE_SPEC[:n]` / `tense:past|future[:test][:n]` (eds.jailbreaks)."""
    # --- jailbreak-wrapped sets: parsed, sampled and split-checked by eds.jailbreaks ---
    if spec.startswith(("jb:", "tense:")):
        from .jailbreaks import load_spec

        return load_spec(spec, seed=seed)
    # --- end jailbreak hook ---
    parts = spec.split(":")
    count: int | None = None
    if len(parts) > 1 and parts[-1].isdigit():
        count = int(parts.pop())
    head = ":".join(parts)
    split: str | None = None
    if Path(head).suffix.lower() in (".jsonl", ".json", ".csv"):
        rows = read_file(head)
    else:
        name, _, split = head.partition(":")
        if split and split not in SPLITS:
            raise DataError(f"{spec!r}: unknown split {split!r} (use one of {', '.join(SPLITS)})")
        rows = read_file(_builtin_path(name), dataset=name)
        if split:
            rows = [r for r in rows if r.split == split]
            if not rows:
                raise DataError(f"{spec!r}: {name} has no {split!r} split")
    if count is not None and count < len(rows):
        rows = sorted(random.Random(f"{seed}:{spec}").sample(rows, count), key=rows.index)
    return rows


def load_many(specs: Iterable[str], *, seed: int = 0) -> list[Prompt]:
    """Load several specs; the same prompt key twice is an error, not a silent double count. The same
    prompt text under two datasets (alpaca_scary is a view of alpaca) is kept once, the first time."""
    out: list[Prompt] = []
    seen: set[str] = set()
    texts: set[str] = set()
    for spec in specs:
        for r in load(spec, seed=seed):
            if r.key in seen:
                raise DataError(f"{spec!r}: prompt {r.key} is already in the mixture")
            seen.add(r.key)
            if r.prompt in texts:
                continue
            texts.add(r.prompt)
            out.append(r)
    return out


#: Phase-1 default: train splits only. Two harmful sources in different styles, scary-sounding
#: benign prompts (ORB-H) and plain ones (Alpaca, sampled).
DEFAULT_MIXTURE: tuple[str, ...] = (
    "advbench:train",
    "donotanswer:train",
    "orbench_hard:train",
    "alpaca:train:400",
)
#: Train prompts wrapped in the training family of jailbreak templates (eds.jailbreaks), harmful and
#: benign alike, so that neither the energy models nor the gate learn "template = harmful".
#: Needs the pyrit-jailbreaks asset (`eds fetch --assets`).
JAILBREAK_TRAIN: tuple[str, ...] = (
    "jb:pyrit-wild:advbench:train:70",
    "jb:pyrit-wild:donotanswer:train:50",
    "jb:pyrit-wild:alpaca:train:80",
    "jb:pyrit-wild:contrast:train:40",
)
#: Train prompts asked about the past or the future (eds-written frames, no asset needed), harmful and
#: benign alike: tense rephrasing is a known attack on refusal training.
TENSE_TRAIN: tuple[str, ...] = (
    "jb:eds-tense:advbench:train:80",
    "jb:eds-tense:donotanswer:train:50",
    "jb:eds-tense:alpaca:train:60",
    "jb:eds-tense:contrast:train:50",
)
#: What the results' gate also learns from, apart from the energy models (eds train --gate-data):
#: eds-written past/future-tense questions about harmful topics and their harmful twins
GATE_MIXTURE: tuple[str, ...] = ("tense_contrast:train",)
#: What the results' bundle was trained on (docs/results.md): the default mixture plus short benign
#: prompts with harm-sounding words (alpaca_scary), the contrast set (benign ones in a safe sense and
#: minimal harmful contrasts), the jailbreak-wrapped and the tense-framed train prompts.
RECIPE_MIXTURE: tuple[str, ...] = (
    *DEFAULT_MIXTURE,
    "alpaca_scary:train",
    "contrast:train",
    *JAILBREAK_TRAIN,
    *TENSE_TRAIN,
)


def stratified_limit(prompts: list[Prompt], limit: int, *, seed: int = 0) -> list[Prompt]:
    """Keep `limit` prompts, spread over datasets in proportion (at least one each), seeded."""
    if limit >= len(prompts):
        return prompts
    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        groups.setdefault(p.dataset, []).append(p)
    total = len(prompts)
    quota = {d: max(1, round(limit * len(g) / total)) for d, g in groups.items()}
    while sum(quota.values()) > limit:  # trim rounding excess from the biggest group
        biggest = max(quota, key=lambda d: quota[d])
        quota[biggest] -= 1
    rng = random.Random(seed)
    keep: set[str] = set()
    for d, g in groups.items():
        keep.update(p.key for p in rng.sample(g, min(quota[d], len(g))))
    return [p for p in prompts if p.key in keep]
