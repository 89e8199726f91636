"""`eds eval`: one model, plain and (with a bundle) steered, through every evaluation eds has: refusal
benchmarks (test splits and users' files), jailbreak robustness, and capability kept (MMLU, HumanEval,
drift on plain prompts). Every part writes prompt-level records and resumes; the result is one JSON
file (schema in docs/eval.md) plus a Markdown report with plots."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bundle import BundleError, EnergyBundle
from .evaluate import EvalResult, evaluate_refusals
from .io import versions, write_text_atomic
from .models import DEFAULT_MODEL, LoadedModel, load_model

SCHEMA = "eds.eval/1"

REFUSAL_SETS = (
    "orbench_hard:test",
    "xstest:test",
    "oktest:test",
    "jailbreakbench:test",
    "harmbench:test",
    "donotanswer:test",
)
#: jailbreak-wrapped harmful test prompts: template families never used for training (eds.jailbreaks)
ROBUSTNESS_SETS = (
    "jb:pyrit-curated:jailbreakbench:test:50",
    "jb:gptfuzzer:jailbreakbench:test:50",
    "tense:past:test:50",
    "tense:future:test:50",
)
CAPABILITY = ("mmlu", "humaneval", "drift")


@dataclass
class EvalConfig:
    """What `eds eval` runs. `limit` caps every prompt set (a quick look, not a result)."""

    model: str = DEFAULT_MODEL
    bundle: str | None = None
    out: str = "runs/eval"
    refusal_sets: tuple[str, ...] = REFUSAL_SETS
    data: tuple[str, ...] = ()  # users' prompt files, added to the refusal sets
    robustness_sets: tuple[str, ...] = ROBUSTNESS_SETS
    capability: tuple[str, ...] = CAPABILITY
    limit: int | None = None
    max_new_tokens: int = 48
    batch_size: int = 16
    judge: str = "substring"
    mmlu_per_subject: int | None = 5  # None: all 14,042 questions
    humaneval_limit: int | None = None
    humaneval_max_new_tokens: int = 384
    drift_set: str = "alpaca:test:50"
    drift_max_new_tokens: int = 48
    seed: int = 0
    steer: dict[str, Any] = field(default_factory=dict)  # overrides of the bundle's saved settings
    gate_model: str | None = None  # the bundle's gate model loaded by this name instead of its recorded one


def limited(spec: str, n: int | None) -> str:
    """`spec` with at most n prompts: appends or lowers the sample size of a shipped-set spec."""
    if n is None:
        return spec
    parts = spec.split(":")
    if parts[-1].isdigit():
        parts[-1] = str(min(int(parts[-1]), n))
        return ":".join(parts)
    if Path(parts[0]).suffix or spec.startswith(("jb:", "tense:")):  # files and wrapped sets take `:n` last
        return f"{spec}:{n}"
    if len(parts) == 1:
        parts.append("test")
    return ":".join([*parts, str(n)])


def _arms(bundle: EnergyBundle | None) -> list[tuple[str, EnergyBundle | None]]:
    return [("base", None)] + ([("steered", bundle)] if bundle is not None else [])


def _refusal_section(
    lm: LoadedModel, cfg: EvalConfig, bundle: EnergyBundle | None, sets: tuple[str, ...], name: str, rec: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    results: dict[str, EvalResult] = {}
    for arm, b in _arms(bundle):
        t0 = time.perf_counter()
        res = evaluate_refusals(
            lm,
            [limited(s, cfg.limit) for s in sets],
            bundle=b,
            judge=cfg.judge,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            records_path=rec / f"{name}-{arm}.jsonl",
            seed=cfg.seed,
            label=f"{name} ({arm})",
            **(cfg.steer if b is not None else {}),
        )
        results[arm] = res
        out[arm] = {
            "datasets": [d.to_dict() for d in res.datasets],
            "records": str(rec / f"{name}-{arm}.jsonl"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    if "steered" in results:
        out["flips"] = _flips(results["base"], results["steered"])
    out["judge"] = results["base"].judge
    return out


def _flips(base: EvalResult, steered: EvalResult) -> dict[str, dict[str, int]]:
    """Per dataset, prompts whose verdict changed: refused→answered and answered→refused."""
    s = {r["key"]: r for r in steered.records}
    flips: dict[str, dict[str, int]] = {}
    for r in base.records:
        t = s.get(r["key"])
        if t is None:
            continue
        f = flips.setdefault(r["group"], {"refused_to_answered": 0, "answered_to_refused": 0})
        if r["refused"] and not t["refused"]:
            f["refused_to_answered"] += 1
        elif t["refused"] and not r["refused"]:
            f["answered_to_refused"] += 1
    return flips


def _capability_runners() -> dict[str, Callable[..., dict[str, Any]]]:
    """Each runner: (lm, cfg, bundle or None, records folder, arm) -> a JSON-able dict."""

    def mmlu(lm: LoadedModel, cfg: EvalConfig, b: EnergyBundle | None, rec: Path, arm: str) -> dict[str, Any]:
        from .mmlu import evaluate_mmlu

        res = evaluate_mmlu(
            lm,
            bundle=b,
            per_subject=cfg.mmlu_per_subject,
            batch_size=cfg.batch_size,
            records=rec / f"mmlu-{arm}.jsonl",
            **(cfg.steer if b is not None else {}),
        )
        return res.to_dict()

    def humaneval(lm: LoadedModel, cfg: EvalConfig, b: EnergyBundle | None, rec: Path, arm: str) -> dict[str, Any]:
        from .humaneval import evaluate_humaneval

        res = evaluate_humaneval(
            lm,
            bundle=b,
            limit=cfg.limit if cfg.humaneval_limit is None else cfg.humaneval_limit,
            max_new_tokens=cfg.humaneval_max_new_tokens,
            batch_size=min(cfg.batch_size, 8),
            records=rec / f"humaneval-{arm}.jsonl",
            **(cfg.steer if b is not None else {}),
        )
        return res.to_dict()

    def drift(lm: LoadedModel, cfg: EvalConfig, b: EnergyBundle | None, rec: Path, arm: str) -> dict[str, Any]:
        if b is None:
            return {}
        from . import data as data_mod
        from .drift import measure_drift

        prompts = [p.prompt for p in data_mod.load(limited(cfg.drift_set, cfg.limit), seed=cfg.seed)]
        res = measure_drift(
            lm,
            b,
            prompts,
            max_new_tokens=cfg.drift_max_new_tokens,
            batch_size=min(cfg.batch_size, 8),
            **cfg.steer,
        )
        return res.to_dict() | {"prompts": limited(cfg.drift_set, cfg.limit)}

    return {"mmlu": mmlu, "humaneval": humaneval, "drift": drift}


def _cached_section(path: Path, settings: dict[str, Any], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Sections without their own records (drift) are kept whole, with the settings that made them."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return saved["result"]
    result = make()
    write_text_atomic(path, json.dumps({"settings": settings, "result": result}, indent=1, default=str))
    return result


def run_eval(
    cfg: EvalConfig, lm: LoadedModel | None = None, *, progress: bool = True, command: str | None = None
) -> dict[str, Any]:
    """Run every requested part for base (and steered, with a bundle); write result.json and report.md."""
    from .report import make_console

    console = make_console(quiet=not progress)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    rec = out / "records"
    rec.mkdir(parents=True, exist_ok=True)
    lm = lm or load_model(cfg.model)
    bundle = EnergyBundle.load(cfg.bundle) if cfg.bundle else None
    if cfg.gate_model and bundle is None:
        raise BundleError("a gate model replaces a bundle's: give a bundle too")
    if bundle is not None:
        bundle.check(lm)
        bundle.prepare_gate_model(lm, cfg.gate_model)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command,
        "config": asdict(cfg),
        "model": lm.fingerprint.to_dict(),
        "dtype": lm.dtype_name,  # replies differ between dtypes
        "bundle": None
        if bundle is None
        else {
            "path": cfg.bundle,
            "sha256": bundle.digest(),
            "layers": bundle.layers,
            "gate_layer": bundle.gate_layer,
            "steering": asdict(bundle.steering) | {k: v for k, v in cfg.steer.items() if v is not None},
        },
        "versions": versions(),
        "sections": {},
        "seconds": {},
    }
    sets = tuple(cfg.refusal_sets) + tuple(cfg.data)
    if sets:
        console.rule("[bold]refusal benchmarks")
        t0 = time.perf_counter()
        result["sections"]["refusal"] = _refusal_section(lm, cfg, bundle, sets, "refusal", rec)
        result["seconds"]["refusal"] = round(time.perf_counter() - t0, 1)
    if cfg.robustness_sets:
        console.rule("[bold]jailbreak robustness")
        t0 = time.perf_counter()
        result["sections"]["robustness"] = _refusal_section(
            lm, cfg, bundle, tuple(cfg.robustness_sets), "robustness", rec
        )
        result["seconds"]["robustness"] = round(time.perf_counter() - t0, 1)
    runners = _capability_runners()
    for part in cfg.capability:
        if part not in runners:
            raise ValueError(f"unknown capability check {part!r}; known: {', '.join(runners)}")
        console.rule(f"[bold]capability: {part}")
        t0 = time.perf_counter()
        section: dict[str, Any] = {}
        for arm, b in _arms(bundle):
            if part == "drift":
                if b is None:
                    continue
                key = {
                    "model": result["model"],
                    "dtype": lm.dtype_name,
                    "bundle": result["bundle"],
                    "set": cfg.drift_set,
                    "limit": cfg.limit,
                    "seed": cfg.seed,  # draws the prompts
                    "max_new_tokens": cfg.drift_max_new_tokens,
                }
                section[arm] = _cached_section(
                    rec / "drift.json", key, lambda b=b, arm=arm: runners["drift"](lm, cfg, b, rec, arm)
                )
            else:
                section[arm] = runners[part](lm, cfg, b, rec, arm)
        result["sections"][part] = section
        result["seconds"][part] = round(time.perf_counter() - t0, 1)
    result["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    write_text_atomic(out / "result.json", json.dumps(result, indent=1, default=str))
    from .report import write_report

    write_report(result, out)
    return result
