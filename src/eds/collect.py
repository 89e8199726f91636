"""Phase 1: generate greedy responses, judge them, label each prompt good or bad in its context, and
store the hidden states entering every decoder layer, captured during the same generate call.

Positions kept per prompt: the last prompt token (index 0) and the first k generated tokens
(indices 1..k). Generated token j enters the network on decode step j+1, so generation must run at
least k+1 forward passes; positions a sequence never reached (it stopped early) are masked.

On disk: `manifest.json` plus shards `shard-NNNNN.safetensors` (tensors `h.{layer}` [n, 1+k, H],
`gen_valid` [n, k], `good` [n], `harmful` [n]) and `shard-NNNNN.jsonl` (one record per row, same
order). Shards are written atomically before the manifest names them, so the manifest is the commit
point: a killed run resumes from the last manifest with no row lost or counted twice.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import data as data_mod
from .io import exclusive, fsync_file, sha256_file, tmp_path, versions, write_text_atomic
from .judge import Judge, get_judge, judge_digest
from .models import Fingerprint, LoadedModel, layer_input, resolve_dtype

FORMAT = "eds.collection/1"
TINY_CLASS = 10


class CollectionError(RuntimeError):
    """A collection folder cannot be used as asked (other settings, damaged files)."""


@dataclass
class CollectConfig:
    """What to collect and how. Everything here is recorded in the manifest and must match on resume."""

    data: tuple[str, ...] = data_mod.DEFAULT_MIXTURE
    limit: int | None = None
    max_new_tokens: int = 48
    gen_tokens: int = 4
    batch_size: int = 16
    shard_size: int = 64
    system_prompt: str | None = None
    store_dtype: str = "bfloat16"
    seed: int = 0

    def validate(self) -> None:
        if self.gen_tokens < 0:
            raise ValueError("gen_tokens must be >= 0")
        if self.max_new_tokens < self.gen_tokens + 1:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must exceed gen_tokens ({self.gen_tokens}): "
                "generated token j is only fed to the model on the step after it is produced"
            )
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        resolve_dtype(self.store_dtype)

    def identity(self) -> dict[str, Any]:
        """Settings that change what a row holds; batch and shard size do not."""
        d = asdict(self)
        for k in ("batch_size", "shard_size"):
            d.pop(k)
        d["data"] = list(d["data"])
        return d


def outcome(label: str, refused: bool) -> str:
    """good = benign answered or harmful refused; bad = benign refused (false refusal) or harmful answered."""
    return "good" if refused == (label == "harmful") else "bad"


# ----------------------------------------------------------------------------- capture


class _Recorder:
    """Forward pre-hooks on every decoder layer keeping the residual stream entering it at the last
    position of the prefill call and of the first k decode calls. Python counters only, no sync."""

    def __init__(self, layers: Sequence[torch.nn.Module], k: int, dtype: torch.dtype):
        self.k, self.dtype = k, dtype
        self.calls = [0] * len(layers)
        self.store: list[list[torch.Tensor]] = [[] for _ in layers]
        self.handles = [
            layer.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(layers)
        ]

    def _hook(self, i: int):
        def hook(module, args, kwargs):
            if self.calls[i] <= self.k:
                hidden = layer_input(args, kwargs)
                self.store[i].append(hidden[:, -1, :].detach().to(self.dtype, copy=True))
            self.calls[i] += 1

        return hook

    def stacked(self, batch: int, hidden: int) -> tuple[list[torch.Tensor], int]:
        """Per layer [batch, 1+k, H] (zeros where never reached) and the positions actually seen."""
        out = []
        seen = len(self.store[0])
        for kept in self.store:
            t = torch.zeros(batch, self.k + 1, hidden, dtype=self.dtype)
            if kept:
                t[:, : len(kept)] = torch.stack(kept, dim=1).cpu()
            out.append(t)
        return out, seen

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _eos_ids(lm: LoadedModel) -> list[int]:
    ids = lm.model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if lm.tokenizer.eos_token_id is not None:
        ids.append(lm.tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.inference_mode()
def generate_with_states(
    lm: LoadedModel,
    prompts: list[str],
    *,
    max_new_tokens: int,
    k: int,
    store_dtype: torch.dtype,
    system_prompt: str | None = None,
) -> tuple[list[str], list[torch.Tensor], torch.Tensor, list[int]]:
    """Greedy-generate for a batch, capturing states in the same pass.

    Returns responses, per-layer states [B, 1+k, H], gen_valid [B, k] and response token counts."""
    enc = lm.encode(prompts, system_prompt)
    rec = _Recorder(lm.layers, k, store_dtype)
    try:
        out = lm.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    finally:
        rec.remove()
    new = out[:, enc["input_ids"].shape[1] :].cpu()
    stop = torch.isin(new, torch.tensor([*_eos_ids(lm), lm.tokenizer.pad_token_id]))
    # length = index of the first stop token (or all of it)
    idx = torch.arange(new.shape[1]).expand_as(new)
    lengths = torch.where(stop, idx, torch.full_like(idx, new.shape[1])).min(dim=1).values
    states, seen = rec.stacked(len(prompts), lm.fingerprint.hidden_size)
    gen_valid = torch.arange(k).unsqueeze(0) < lengths.clamp(max=max(seen - 1, 0)).unsqueeze(1)
    responses = lm.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [r.strip() for r in responses], states, gen_valid, lengths.tolist()


# ----------------------------------------------------------------------------- storage


def _write_shard(folder: Path, index: int, rows: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> dict:
    stem = f"shard-{index:05d}"
    st_path, js_path = folder / f"{stem}.safetensors", folder / f"{stem}.jsonl"
    tmp = tmp_path(st_path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": FORMAT})
    fsync_file(tmp)  # on disk before the manifest (fsynced too) names it
    os.replace(tmp, st_path)
    write_text_atomic(js_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"name": stem, "rows": len(rows), "sha256": sha256_file(st_path), "records_sha256": sha256_file(js_path)}


# ----------------------------------------------------------------------------- reading


@dataclass
class Collection:
    """A finished or partial collection on disk: records in memory, states read per layer on demand."""

    path: Path
    manifest: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = False) -> Collection:
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.is_file():
            raise CollectionError(f"{path}: no manifest.json; not a collection folder")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise CollectionError(f"{mf}: unreadable ({e})") from None
        if manifest.get("format") != FORMAT:
            raise CollectionError(f"{mf}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        if "rejudge_pending" in manifest:
            raise CollectionError(f"{path}: an `eds rejudge` was interrupted here; run `eds rejudge {path}` again")
        records: list[dict[str, Any]] = []
        for shard in manifest["shards"]:
            if not re.fullmatch(r"shard-\d{5}", str(shard.get("name"))):
                raise CollectionError(f"{mf}: bad shard name {shard.get('name')!r}")
            for suffix, key in ((".safetensors", "sha256"), (".jsonl", "records_sha256")):
                p = path / (shard["name"] + suffix)
                if not p.is_file():
                    raise CollectionError(f"{p}: listed in the manifest but missing")
                if verify and sha256_file(p) != shard[key]:
                    raise CollectionError(f"{p}: fails its sha256 check; the collection is damaged")
            with open(path / f"{shard['name']}.jsonl", encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            if len(rows) != shard["rows"]:
                raise CollectionError(f"{shard['name']}.jsonl: {len(rows)} rows, manifest says {shard['rows']}")
            records.extend(rows)
        # an `eds rejudge` that began while the shards were read would mix old and new labels; a collect that
        # appended shards meanwhile changes nothing already read
        now = json.loads(mf.read_text())
        if "rejudge_pending" in now or now["shards"][: len(manifest["shards"])] != manifest["shards"]:
            raise CollectionError(f"{path} changed while it was read (an `eds rejudge`?); open it again")
        return cls(path=path, manifest=manifest, records=records)

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_dict(self.manifest["fingerprint"])

    @property
    def complete(self) -> bool:
        return len(self.records) == len(self.manifest["plan"])

    @property
    def num_layers(self) -> int:
        return int(self.manifest["fingerprint"]["num_layers"])

    def _cat(self, name: str) -> torch.Tensor:
        parts = []
        for shard in self.manifest["shards"]:
            with safe_open(self.path / f"{shard['name']}.safetensors", framework="pt") as f:
                parts.append(f.get_tensor(name))
        if not parts:
            raise CollectionError(f"{self.path}: the collection has no rows yet")
        return torch.cat(parts)

    def states(self, layer: int) -> torch.Tensor:
        """[n, 1+k, H] states entering decoder `layer`: position 0 = last prompt token."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range: the model has layers 0..{self.num_layers - 1}")
        return self._cat(f"h.{layer}")

    def gen_valid(self) -> torch.Tensor:
        return self._cat("gen_valid")

    def good(self) -> torch.Tensor:
        """[n] bool, from the records read at open: the labels and the outcomes they were read with agree,
        whatever `eds rejudge` writes later (the shards' `good` tensors say the same for other readers)."""
        return torch.tensor([r["outcome"] == "good" for r in self.records], dtype=torch.bool)

    def counts(self) -> dict[str, Counter]:
        """Outcome counts per context (benign / harmful)."""
        return label_counts(self.records)


@dataclass
class CollectionUnion(Collection):
    """Several collections of the same model read as one, so a training set can grow by collecting
    only the new prompts. Rows keep their order (first collection first); states of collections that
    kept fewer generated positions are zero-padded and marked invalid there."""

    parts: list[Collection] = field(default_factory=list)
    keep: list[list[int]] = field(default_factory=list)  # rows of each part that are read

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.parts)

    def _cat(self, name: str) -> torch.Tensor:
        ts = [p._cat(name)[rows] for p, rows in zip(self.parts, self.keep, strict=True)]
        if ts[0].dim() > 1:
            width = max(t.shape[1] for t in ts)
            ts = [torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1], *t.shape[2:])], 1) for t in ts]
        return torch.cat(ts)


def collection_dtypes(col: Collection) -> set[str]:
    """The dtypes the collections' model ran in (not recorded before: bf16, then the default)."""
    return {p.manifest.get("model_dtype", "bfloat16") for p in getattr(col, "parts", None) or [col]}


def open_collections(paths: Sequence[str | Path]) -> Collection:
    """One collection, or several of the same model and judge read as one (see CollectionUnion)."""
    cols = [Collection.open(p) for p in paths]
    if not cols:
        raise CollectionError("no collection given")
    if len(cols) == 1:
        return cols[0]
    first = cols[0]
    seen: dict[str, Path] = {}
    judged: dict[str, Path] = {}  # judge digest -> the first collection that carries it
    texts: set[str] = set()
    keep: list[list[int]] = []
    for c in cols:
        diff = first.fingerprint.mismatches(c.fingerprint)
        if diff:
            raise CollectionError(f"{c.path} was collected from another model than {first.path}: {'; '.join(diff)}")
        if c.manifest.get("judge") != first.manifest.get("judge"):
            raise CollectionError(
                f"{c.path} was judged by {c.manifest.get('judge')!r}, {first.path} by "
                f"{first.manifest.get('judge')!r}: labels would not mean the same"
            )
        digest = c.manifest.get("judge_digest")
        if digest is not None:  # collections from before judges were hashed carry none: they are not compared
            judged.setdefault(digest, c.path)
            if len(judged) > 1:
                a, b = judged.values()
                raise CollectionError(
                    f"{a} and {b} were judged by different versions of the {first.manifest.get('judge')!r} "
                    "judge (its phrases differ): labels would not mean the same"
                )
        for r in c.records:
            key = r["key"]
            if key in seen:
                raise CollectionError(f"prompt {key} is in both {seen[key]} and {c.path}; a prompt may be in one only")
            seen[key] = c.path
        # the same prompt under two datasets (alpaca_scary is a view of alpaca): read it once
        rows = [i for i, r in enumerate(c.records) if r["prompt"] not in texts]
        if len(rows) < len(c.records):
            warnings.warn(
                f"{c.path}: {len(c.records) - len(rows)} prompts already read from an earlier collection; skipped",
                stacklevel=2,
            )
        texts.update(r["prompt"] for r in c.records)
        keep.append(rows)
    manifest = {
        **first.manifest,
        "config": [c.manifest.get("config") for c in cols],
        "union": [str(c.path) for c in cols],
    }
    records = [c.records[i] for c, rows in zip(cols, keep, strict=True) for i in rows]
    manifest["plan"] = [r["key"] for r in records]
    return CollectionUnion(path=first.path, manifest=manifest, records=records, parts=cols, keep=keep)


def label_counts(records: Sequence[dict[str, Any]]) -> dict[str, Counter]:
    out: dict[str, Counter] = {"benign": Counter(), "harmful": Counter()}
    for r in records:
        out[r["label"]][r["outcome"]] += 1
    return out


def class_warnings(records: Sequence[dict[str, Any]]) -> list[str]:
    """Training needs both good and bad states; say so plainly when a class is empty or tiny."""
    total = Counter(r["outcome"] for r in records)
    msgs = []
    for cls in ("good", "bad"):
        n = total.get(cls, 0)
        if n == 0:
            msgs.append(f"no '{cls}' rows at all: an energy model cannot be trained on one class")
        elif n < TINY_CLASS:
            msgs.append(f"only {n} '{cls}' rows: too few to train or score an energy model reliably")
    return msgs


# ----------------------------------------------------------------------------- the job


def _plan(lm: LoadedModel, cfg: CollectConfig) -> list[data_mod.Prompt]:
    prompts = data_mod.load_many(cfg.data, seed=cfg.seed)
    unlabeled = [p.key for p in prompts if p.label is None]
    if unlabeled:
        raise data_mod.DataError(
            f"collection needs a benign/harmful label on every prompt; unlabelled: {unlabeled[:5]}"
            + (" ..." if len(unlabeled) > 5 else "")
        )
    if cfg.limit is not None:
        prompts = data_mod.stratified_limit(prompts, cfg.limit, seed=cfg.seed)
    # Longest first within the plan: batches of similar length waste little on padding, and the
    # slowest batches come first, so the rate shown settles early.
    lengths = [len(lm.tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], prompts[i].key))
    return [prompts[i] for i in order]


def _open_or_create(
    out: Path, lm: LoadedModel, cfg: CollectConfig, plan: list[str], overwrite: bool
) -> tuple[dict, set[str]]:
    """The manifest to continue (checked against the current settings) and the keys already collected."""
    mf = out / "manifest.json"
    if mf.exists() and not overwrite:
        existing = Collection.open(out)
        manifest = existing.manifest
        problems = []
        if manifest["config"] != cfg.identity():
            diff = {
                k: (manifest["config"].get(k), v) for k, v in cfg.identity().items() if manifest["config"].get(k) != v
            }
            problems.append(f"settings differ (was, now): {diff}")
        bad = Fingerprint.from_dict(manifest["fingerprint"]).mismatches(lm.fingerprint)
        if bad or manifest["fingerprint"].get("name") != lm.fingerprint.name:
            was = manifest["fingerprint"].get("name")
            problems.append(
                f"made with model {was!r}, not {lm.fingerprint.name!r}" + (f" ({'; '.join(bad)})" if bad else "")
            )
        made_in = manifest.get("model_dtype", "bfloat16")  # not recorded before: bf16 was then the default
        if made_in != lm.dtype_name:
            problems.append(f"made with the model in {made_in}, not {lm.dtype_name} (--dtype)")
        if manifest.get("chat_format") != lm.chat_texts(["<prompt>"], cfg.system_prompt)[0]:
            problems.append("the chat format differs (another system prompt or chat template)")
        if not problems and manifest["plan"] != plan:
            problems.append("the prompt list differs (data files changed?)")
        if problems:
            raise CollectionError(
                f"{out} holds a collection made differently: {'; '.join(problems)}. "
                "Use another output folder, or --overwrite to start again."
            )
        return manifest, {r["key"] for r in existing.records}
    if any(p.name != _LOCK for p in out.iterdir()) and not overwrite and not mf.exists():
        raise CollectionError(f"{out} exists and is not an eds collection; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in out.glob("shard-*"):
            p.unlink()
    example = lm.chat_texts(["<prompt>"], cfg.system_prompt)[0]
    manifest = {
        "format": FORMAT,
        "config": cfg.identity(),
        "fingerprint": lm.fingerprint.to_dict(),
        "chat_format": example,
        "model_dtype": lm.dtype_name,
        "positions": ["last_prompt_token"] + [f"gen_{j}" for j in range(cfg.gen_tokens)],
        "judge": None,
        "plan": plan,
        "shards": [],
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(mf, json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest, set()


def _batches(items: list[data_mod.Prompt], size: int) -> Iterator[list[data_mod.Prompt]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def collect(
    lm: LoadedModel,
    out: str | Path,
    config: CollectConfig | None = None,
    *,
    judge: str | Judge = "substring",
    overwrite: bool = False,
    progress: bool = True,
) -> Collection:
    """Run phase 1 into folder `out` (resuming what is already there) and return the collection."""
    cfg = config or CollectConfig()
    cfg.validate()
    judge_fn = get_judge(judge)
    out = Path(out)
    plan = _plan(lm, cfg)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _collect_locked(lm, out, cfg, plan, judge_fn, overwrite, progress)


_LOCK = ".lock"


def _exclusive(out: Path):
    """One writer per collection folder: a second `collect` on the same folder would delete the first's
    shards as orphans."""
    return exclusive(
        out / _LOCK,
        lambda: CollectionError(f"another process is collecting into {out}; wait for it or use another folder"),
    )


def _collect_locked(
    lm: LoadedModel,
    out: Path,
    cfg: CollectConfig,
    plan: list[data_mod.Prompt],
    judge_fn: Judge,
    overwrite: bool,
    progress: bool,
) -> Collection:
    manifest, done = _open_or_create(out, lm, cfg, [p.key for p in plan], overwrite)
    judge_name, digest = getattr(judge_fn, "name", type(judge_fn).__name__), judge_digest(judge_fn)
    if manifest["judge"] not in (None, judge_name):
        raise CollectionError(f"{out} was judged with {manifest['judge']!r}, not {judge_name!r}")
    if manifest.get("judge_digest") not in (None, digest):
        raise CollectionError(
            f"{out} was judged with another version of the {judge_name!r} judge (its phrases differ); "
            f"`eds rejudge {out}` relabels its stored replies with this one (no generation)"
        )
    if manifest["judge"] is None or "judge_digest" in manifest:  # never vouch for rows labelled before hashing
        manifest["judge_digest"] = digest
    manifest["judge"] = judge_name

    # Shard files the manifest does not name come from a run killed between shard and manifest.
    named = {s["name"] for s in manifest["shards"]}
    for p in out.glob("shard-*"):
        if p.name.split(".")[0] not in named:
            p.unlink()
    for p in out.glob(".*.tmp-*"):
        p.unlink()

    todo = [p for p in plan if p.key not in done]
    dtype = resolve_dtype(cfg.store_dtype)
    assert isinstance(dtype, torch.dtype)
    L = lm.fingerprint.num_layers

    buf_rows: list[dict[str, Any]] = []
    buf_t: dict[str, list[torch.Tensor]] = {}

    def flush() -> None:
        if not buf_rows:
            return
        tensors = {k: torch.cat(v) for k, v in buf_t.items()}
        entry = _write_shard(out, len(manifest["shards"]), buf_rows, tensors)
        manifest["shards"].append(entry)
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
        buf_rows.clear()
        buf_t.clear()

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]collect[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} prompts/s"),
        TimeRemainingColumn(),
    )
    t0 = time.perf_counter()
    processed = 0
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("", total=len(plan), completed=len(done), rate=0.0)
        for batch in _batches(todo, cfg.batch_size):
            texts = [p.prompt for p in batch]
            responses, states, gen_valid, lengths = generate_with_states(
                lm,
                texts,
                max_new_tokens=cfg.max_new_tokens,
                k=cfg.gen_tokens,
                store_dtype=dtype,
                system_prompt=cfg.system_prompt,
            )
            refused = judge_fn(texts, responses)
            if len(refused) != len(batch):
                raise RuntimeError(f"judge returned {len(refused)} verdicts for {len(batch)} responses")
            rows = []
            for p, resp, ref, n in zip(batch, responses, refused, lengths, strict=True):
                assert p.label is not None
                rows.append(
                    {
                        "key": p.key,
                        "id": p.id,
                        "dataset": p.dataset,
                        "split": p.split,
                        "category": p.category,
                        "label": p.label,
                        "prompt": p.prompt,
                        "response": resp,
                        "refused": bool(ref),
                        "outcome": outcome(p.label, bool(ref)),
                        "response_tokens": int(n),
                    }
                )
            buf_rows.extend(rows)
            for layer in range(L):
                buf_t.setdefault(f"h.{layer}", []).append(states[layer])
            buf_t.setdefault("gen_valid", []).append(gen_valid)
            buf_t.setdefault("good", []).append(torch.tensor([r["outcome"] == "good" for r in rows]))
            buf_t.setdefault("harmful", []).append(torch.tensor([r["label"] == "harmful" for r in rows]))
            if len(buf_rows) >= cfg.shard_size:
                flush()
            processed += len(batch)
            bar.update(task, advance=len(batch), rate=processed / max(time.perf_counter() - t0, 1e-9))
        flush()
    elapsed = time.perf_counter() - t0
    col = Collection.open(out)
    col.manifest.setdefault("runs", []).append(
        {
            "prompts": len(todo),
            "seconds": round(elapsed, 2),
            "batch_size": cfg.batch_size,
            "prompts_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None,
        }
    )
    write_text_atomic(out / "manifest.json", json.dumps(col.manifest, indent=1, ensure_ascii=False))
    for msg in class_warnings(col.records):
        warnings.warn(msg, stacklevel=2)
    return col
