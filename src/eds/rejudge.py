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

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .collect import FORMAT, CollectionError, _exclusive, outcome
from .io import fsync_file, sha256_file, tmp_path, write_text_atomic
from .judge import Judge, get_judge, judge_digest

PENDING = "rejudge_pending"
SETTINGS_SUFFIX = ".settings.json"


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


def _verdicts(fn: Judge, rows: Sequence[dict[str, Any]]) -> list[bool]:
    out = fn([r["prompt"] for r in rows], [r["response"] for r in rows])
    if len(out) != len(rows):
        raise RuntimeError(f"judge returned {len(out)} verdicts for {len(rows)} replies")
    return [bool(v) for v in out]


# ----------------------------------------------------------------------------- collections


def rejudge_collection(path: str | Path, judge: str | Judge | None = None, *, dry_run: bool = False) -> Rejudged:
    """Relabel a collection's rows with `judge` (default: the current version of the judge it names)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise RejudgeError(f"{path}: no manifest.json; not a collection folder")
    with _exclusive(path):
        manifest = json.loads(mf.read_text())
        pending = manifest.get(PENDING)
        fn, name = _judge_for(manifest.get("judge"), judge, path)
        shards = manifest["shards"]
        rows_by_shard: list[list[dict[str, Any]]] = []
        for s in shards:
            # after an interrupted rejudge each file is the old one or the staged one: either is whole
            staged = (pending or {}).get("shards", {}).get(s["name"], {})
            for suffix, key in ((".safetensors", "sha256"), (".jsonl", "records_sha256")):
                p = path / (s["name"] + suffix)
                if not p.is_file() or sha256_file(p) not in {s[key], staged.get(key)}:
                    raise RejudgeError(f"{p}: missing or fails its sha256 check; the collection is damaged")
            with open(path / f"{s['name']}.jsonl", encoding="utf-8") as f:
                rows_by_shard.append([json.loads(line) for line in f])
        n = sum(map(len, rows_by_shard))
        res = Rejudged(path, "collection", n, name, manifest.get("judge_digest"), judge_digest(fn))
        new_rows: list[list[dict[str, Any]]] = []
        for rows in rows_by_shard:
            verdicts = _verdicts(fn, rows) if rows else []
            out = []
            for r, v in zip(rows, verdicts, strict=True):
                if v != r["refused"]:
                    res.changed.append({"key": r["key"], "label": r["label"], "response": r["response"], "refused": v})
                out.append({**r, "refused": v, "outcome": outcome(r["label"], v)})
            new_rows.append(out)
        same_judge = manifest.get("judge") == name and manifest.get("judge_digest") == res.digest_after
        if dry_run or (not res.changed and same_judge and not pending):
            return res
        if not res.changed and not pending:  # no verdict moved: only the judge's name and digest change
            _commit(mf, manifest, res)
            return res
        # 1. new files beside the old ones (every shard: a pending rerun cannot tell which were swapped)
        staged: dict[str, dict[str, Any]] = {}
        for s, rows in zip(shards, new_rows, strict=True):
            st, js = path / f"{s['name']}.safetensors", path / f"{s['name']}.jsonl"
            tensors = load_file(str(st))
            good = tensors["good"]
            tensors["good"] = good.new_tensor([r["outcome"] == "good" for r in rows])
            t_st, t_js = tmp_path(st), tmp_path(js)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(t_st), metadata={"format": FORMAT})
            fsync_file(t_st)
            with open(t_js, "w", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())
            staged[s["name"]] = {"sha256": sha256_file(t_st), "records_sha256": sha256_file(t_js), "tmp": (t_st, t_js)}
        # 2. the mark: from here until step 4, readers refuse the folder and a rerun finishes the job
        manifest[PENDING] = {
            "judge": name,
            "judge_digest": res.digest_after,
            "shards": {k: {"sha256": v["sha256"], "records_sha256": v["records_sha256"]} for k, v in staged.items()},
        }
        write_text_atomic(mf, json.dumps(manifest, indent=1, ensure_ascii=False))
        # 3. swap
        for s in shards:
            t_st, t_js = staged[s["name"]]["tmp"]
            os.replace(t_st, path / f"{s['name']}.safetensors")
            os.replace(t_js, path / f"{s['name']}.jsonl")
        # 4. commit
        for s in shards:
            s["sha256"], s["records_sha256"] = staged[s["name"]]["sha256"], staged[s["name"]]["records_sha256"]
        del manifest[PENDING]
        _commit(mf, manifest, res)
        return res


def _commit(mf: Path, manifest: dict[str, Any], res: Rejudged) -> None:
    """The manifest under the new judge, with a line of history: the commit point of a rejudge."""
    import time

    manifest.setdefault("rejudged", []).append(
        {
            "judge": res.judge,
            "from_digest": res.digest_before,
            "to_digest": res.digest_after,
            "to_refused": res.to_refused,
            "to_answered": res.to_answered,
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


def settings_path(records: Path) -> Path:
    return records.with_name(records.name + SETTINGS_SUFFIX)


def rejudge_records(path: str | Path, judge: str | Judge | None = None, *, dry_run: bool = False) -> Rejudged:
    """Relabel an evaluation records file (`eds eval`, `eds tune`) and its settings' judge."""
    from .io import read_records

    path = Path(path)
    side = settings_path(path)
    if not side.is_file():
        raise RejudgeError(f"{path}: no {side.name} beside it; not an eds records file")
    settings = json.loads(side.read_text())
    if "judge" not in settings:
        raise RejudgeError(f"{path}: its settings name no judge; these records were not judged")
    fn, name = _judge_for(settings["judge"], judge, path)
    records = list(read_records(path).values())  # a line cut by a crash is dropped, as a resume would
    res = Rejudged(path, "records", len(records), name, settings.get("judge_digest"), judge_digest(fn))
    verdicts = _verdicts(fn, records) if records else []
    for r, v in zip(records, verdicts, strict=True):
        if v != r["refused"]:
            res.changed.append({"key": r["key"], "label": r.get("label"), "response": r["response"], "refused": v})
        r["refused"] = v
    after = {k: v for k, v in settings.items() if k not in ("judge_digest", PENDING)}
    after["judge"] = name
    if res.digest_after is not None:
        after["judge_digest"] = res.digest_after
    if dry_run or (not res.changed and after == settings):
        return res
    write_text_atomic(side, json.dumps({**settings, PENDING: True}, indent=1))
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
            if "judge" in json.loads(side.read_text()):  # HumanEval and other unjudged records are left alone
                found.append(("records", side.with_name(side.name[: -len(SETTINGS_SUFFIX)])))
    seen: set[Path] = set()
    unique = [(k, p) for k, p in found if not (p in seen or seen.add(p))]
    if not unique:
        raise RejudgeError(f"nothing judged found in {', '.join(map(str, paths))}")
    return unique


def rejudge(paths: Iterable[str | Path], judge: str | Judge | None = None, *, dry_run: bool = False) -> list[Rejudged]:
    """Relabel every collection and judged records file at or under `paths` (see the module docstring)."""
    out = []
    for kind, p in find_judged(paths):
        fn = rejudge_collection if kind == "collection" else rejudge_records
        try:
            out.append(fn(p, judge, dry_run=dry_run))
        except (CollectionError, json.JSONDecodeError, KeyError) as e:
            raise RejudgeError(f"{p}: {e}") from None
    return out
