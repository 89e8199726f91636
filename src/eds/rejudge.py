"""Judge stored replies again. Collections and evaluation records keep every reply, so a judge fix
(a new refusal phrase) relabels hours of generation in seconds instead of regenerating it.

What changes: `refused` in every record, and in collections `outcome` and the `good` tensor of each
shard; then the judge's name and digest, so resumed runs accept the files under the new judge. The
hidden states and replies are never touched.

Crash safety: new shard files are written beside the old ones first; the manifest (or a records
file's settings) is then marked `rejudge_pending`, the files are swapped in, and the final manifest
drops the mark. An interrupted rejudge leaves the mark, which readers refuse, and running it again
finishes the job: verdicts are a pure function of the stored replies.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .collect import FORMAT, CollectionError, _exclusive, outcome
from .evaluate import SETTINGS_SUFFIX, records_lock, settings_path
from .io import fsync_file, read_records, resumable_rows, sha256_file, tmp_path, write_synced, write_text_atomic
from .judge import Judge, get_judge, judge_digest

PENDING = "rejudge_pending"


class RejudgeError(ValueError):
    """A path holds nothing that can be judged again, or files that do not match their manifest."""


@dataclass
class Rejudged:
    """What one collection or records file looked like before and after."""

    path: Path
    kind: str  # "collection" or "records"
    rows: int
    judge: str
    digest_before: str | None
    digest_after: str | None
    changed: list[dict[str, Any]] = field(default_factory=list)  # rows whose verdict flipped (new verdict)
    written: bool = False
    # what the whole rejudge moved, when it finished one that was interrupted (`changed` then holds only
    # the rows the interruption had left behind)
    counts: tuple[int, int] | None = None

    @property
    def to_refused(self) -> int:
        return sum(r["refused"] for r in self.changed)

    @property
    def to_answered(self) -> int:
        return len(self.changed) - self.to_refused


def _judge_for(recorded: str | None, judge: str | Judge | None, where: Path) -> tuple[Judge, str]:
    if judge is None:
        if recorded is None:
            raise RejudgeError(f"{where}: no judge recorded; give one")
        try:
            judge = get_judge(recorded)
        except ValueError:
            raise RejudgeError(
                f"{where} was judged by {recorded!r}, which is not a built-in judge; pass the judge itself "
                "(eds.rejudge.rejudge(paths, judge=...))"
            ) from None
    fn = get_judge(judge)
    return fn, getattr(fn, "name", type(fn).__name__)


def _changed(row: dict[str, Any], verdict: bool) -> dict[str, Any]:
    return {"key": row["key"], "label": row.get("label"), "response": row["response"], "refused": verdict}


def _verdicts(fn: Judge, rows: Sequence[dict[str, Any]]) -> list[bool]:
    out = fn([r["prompt"] for r in rows], [r["response"] for r in rows])
    if len(out) != len(rows):
        raise RuntimeError(f"judge returned {len(out)} verdicts for {len(rows)} replies")
    return [bool(v) for v in out]


# ----------------------------------------------------------------------------- collections


def _pending_judge(pending: dict[str, Any], judge: str | Judge | None, where: Path) -> Judge:
    """An interrupted rejudge is finished with the judge it started with, whatever else is asked."""
    fn = get_judge(judge if judge is not None else pending["judge"])
    if getattr(fn, "name", type(fn).__name__) != pending["judge"] or judge_digest(fn) != pending.get("judge_digest"):
        raise RejudgeError(
            f"{where}: a rejudge with the {pending['judge']!r} judge (digest {pending.get('judge_digest')}) was "
            "interrupted; finish it first with that judge (`eds rejudge PATH` with no --judge)"
        )
    return fn


def rejudge_collection(path: str | Path, judge: str | Judge | None = None, *, dry_run: bool = False) -> Rejudged:
    """Relabel a collection's rows with `judge` (default: the current version of the judge it names)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise RejudgeError(f"{path}: no manifest.json; not a collection folder")
    with _exclusive(path):
        if not dry_run:
            for p in path.glob(".*.tmp-*"):  # staged by a killed rejudge (or collect): never named anywhere
                p.unlink()
        manifest = json.loads(mf.read_text())
        pending = manifest.get(PENDING)
        if pending:
            fn, name = _pending_judge(pending, judge, path), pending["judge"]
        else:
            fn, name = _judge_for(manifest.get("judge"), judge, path)
        shards = manifest["shards"]
        rows_by_shard: list[list[dict[str, Any]]] = []
        for s in shards:
            # after an interrupted rejudge each file is the old one or a staged one: either is whole
            staged_before = (pending or {}).get("shards", {}).get(s["name"], {})
            for suffix, key in ((".safetensors", "sha256"), (".jsonl", "records_sha256")):
                p = path / (s["name"] + suffix)
                if not p.is_file() or sha256_file(p) not in {s[key], *staged_before.get(key, [])}:
                    raise RejudgeError(f"{p}: missing or fails its sha256 check; the collection is damaged")
            with open(path / f"{s['name']}.jsonl", encoding="utf-8") as f:
                rows_by_shard.append([json.loads(line) for line in f])
        n = sum(map(len, rows_by_shard))
        res = Rejudged(path, "collection", n, name, manifest.get("judge_digest"), judge_digest(fn))
        new_rows: list[list[dict[str, Any]] | None] = []  # None: no verdict of the shard moves
        for rows in rows_by_shard:
            verdicts = _verdicts(fn, rows) if rows else []
            moved = [(r, v) for r, v in zip(rows, verdicts, strict=True) if v != r["refused"]]
            res.changed += [_changed(r, v) for r, v in moved]
            out = [{**r, "refused": v, "outcome": outcome(r["label"], v)} for r, v in zip(rows, verdicts, strict=True)]
            new_rows.append(out if moved else None)
        same_judge = manifest.get("judge") == name and manifest.get("judge_digest") == res.digest_after
        if dry_run or (not res.changed and same_judge and not pending):
            return res
        if pending:  # the history counts what the whole rejudge moved, not what was left after the interruption
            res.counts = (pending["to_refused"], pending["to_answered"])
        # 1. new files beside the old ones, for the shards whose labels move
        staged: dict[str, tuple[Path, Path]] = {}
        mark = pending or {
            "judge": name,
            "judge_digest": res.digest_after,
            "to_refused": res.to_refused,
            "to_answered": res.to_answered,
            "shards": {},
        }
        for s, rows in zip(shards, new_rows, strict=True):
            if rows is None:
                continue
            st, js = path / f"{s['name']}.safetensors", path / f"{s['name']}.jsonl"
            tensors = load_file(str(st))
            tensors["good"] = tensors["good"].new_tensor([r["outcome"] == "good" for r in rows])
            t_st, t_js = tmp_path(st), tmp_path(js)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(t_st), metadata={"format": FORMAT})
            fsync_file(t_st)
            write_synced(t_js, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            staged[s["name"]] = (t_st, t_js)
            known = mark["shards"].setdefault(s["name"], {"sha256": [], "records_sha256": []})
            known["sha256"].append(sha256_file(t_st))
            known["records_sha256"].append(sha256_file(t_js))
        # 2. the mark: from here until step 4, readers refuse the folder and a rerun finishes the job
        manifest[PENDING] = mark
        write_text_atomic(mf, json.dumps(manifest, indent=1, ensure_ascii=False))
        # 3. swap
        for name_, (t_st, t_js) in staged.items():
            os.replace(t_st, path / f"{name_}.safetensors")
            os.replace(t_js, path / f"{name_}.jsonl")
        # 4. commit: every file the mark names is now the one on disk
        for s in shards:
            if s["name"] in mark["shards"]:
                s["sha256"] = sha256_file(path / f"{s['name']}.safetensors")
                s["records_sha256"] = sha256_file(path / f"{s['name']}.jsonl")
        del manifest[PENDING]
        _commit(mf, manifest, res)
        return res


def _commit(mf: Path, manifest: dict[str, Any], res: Rejudged) -> None:
    """The manifest under the new judge, with a line of history: the commit point of a rejudge."""
    import time

    to_refused, to_answered = res.counts or (res.to_refused, res.to_answered)
    manifest.setdefault("rejudged", []).append(
        {
            "judge": res.judge,
            "from_digest": res.digest_before,
            "to_digest": res.digest_after,
            "to_refused": to_refused,
            "to_answered": to_answered,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    manifest["judge"] = res.judge
    if res.digest_after is not None:
        manifest["judge_digest"] = res.digest_after
    else:
        manifest.pop("judge_digest", None)
    write_text_atomic(mf, json.dumps(manifest, indent=1, ensure_ascii=False))
    res.written = True


# ----------------------------------------------------------------------------- evaluation records


def rejudge_records(path: str | Path, judge: str | Judge | None = None, *, dry_run: bool = False) -> Rejudged:
    """Relabel a refusal records file (`eds eval`, `eds tune`) and its settings' judge."""
    path = Path(path)
    side = settings_path(path)
    if not side.is_file():
        raise RejudgeError(f"{path}: no {side.name} beside it; not an eds records file")
    with contextlib.nullcontext() if dry_run else records_lock(path):  # not under a running evaluation
        settings = json.loads(side.read_text())
        if "judge" not in settings:
            raise RejudgeError(f"{path}: its settings name no judge; these records were not judged")
        if not _holds_verdicts(path):
            raise RejudgeError(f"{path}: not refusal records (no reply and verdict per row); nothing to judge")
        records = list(read_records(path).values())  # a line cut by a crash is dropped, as a resume would
        pending = settings.get(PENDING)
        if isinstance(pending, dict):
            fn, name = _pending_judge(pending, judge, path), pending["judge"]
        else:
            fn, name = _judge_for(settings["judge"], judge, path)
        res = Rejudged(path, "records", len(records), name, settings.get("judge_digest"), judge_digest(fn))
        verdicts = _verdicts(fn, records) if records else []
        for r, v in zip(records, verdicts, strict=True):
            if v != r["refused"]:
                res.changed.append(_changed(r, v))
            r["refused"] = v
        after = {k: v for k, v in settings.items() if k not in ("judge_digest", PENDING)}
        after["judge"] = name
        if res.digest_after is not None:
            after["judge_digest"] = res.digest_after
        if dry_run or (not res.changed and after == settings):
            return res
        # the mark first: an evaluation refuses these records until the settings name the judge that made them
        mark = pending if isinstance(pending, dict) else {"judge": name, "judge_digest": res.digest_after}
        write_text_atomic(side, json.dumps({**settings, PENDING: mark}, indent=1))
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_text_atomic(side, json.dumps(after, indent=1))
        res.written = True
        return res


# ----------------------------------------------------------------------------- both


def find_judged(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """(kind, path) of every collection and judged records file at or under `paths`."""
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if not p.exists():
            raise RejudgeError(f"{p}: no such file or folder")
        if p.is_file():
            if p.name == "manifest.json":
                found.append(("collection", p.parent))
            elif p.name.endswith(SETTINGS_SUFFIX):
                found.append(("records", p.with_name(p.name[: -len(SETTINGS_SUFFIX)])))
            else:
                found.append(("records", p))
            continue
        if (p / "manifest.json").is_file():
            found.append(("collection", p))
            continue
        for mf in sorted(p.rglob("manifest.json")):
            found.append(("collection", mf.parent))
        for side in sorted(p.rglob(f"*{SETTINGS_SUFFIX}")):
            records = side.with_name(side.name[: -len(SETTINGS_SUFFIX)])
            # MMLU's and HumanEval's records name a scoring rule as their judge, but hold no verdicts
            if "judge" in json.loads(side.read_text()) and _holds_verdicts(records):
                found.append(("records", records))
    seen: set[Path] = set()
    unique = [(k, p) for k, p in found if not (p in seen or seen.add(p))]
    if not unique:
        raise RejudgeError(f"nothing judged found in {', '.join(map(str, paths))}")
    return unique


def _holds_verdicts(records: Path) -> bool:
    """Refusal records hold a reply and a verdict per row (an empty file: nothing to tell, nothing lost)."""
    if not records.is_file():
        return False
    first = next(resumable_rows(records), None)
    return first is None or ("refused" in first and "response" in first)


def rejudge(paths: Iterable[str | Path], judge: str | Judge | None = None, *, dry_run: bool = False) -> list[Rejudged]:
    """Relabel every collection and refusal records file at or under `paths` (see the module docstring).
    Every file is read and judged before any is written, so one that cannot be judged (an unknown judge,
    a damaged shard) stops the run with nothing changed."""
    targets = find_judged(paths)
    out: list[Rejudged] = []
    for write in (False, True) if not dry_run else (False,):
        out = []
        for kind, p in targets:
            fn = rejudge_collection if kind == "collection" else rejudge_records
            try:
                out.append(fn(p, judge, dry_run=not write))
            except (CollectionError, json.JSONDecodeError, KeyError) as e:
                raise RejudgeError(f"{p}: {e}") from None
    return out
