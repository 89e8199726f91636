"""File plumbing shared by every artifact: checksums, atomic writes, version stamps."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tmp_path(path: Path) -> Path:
    """A hidden sibling to write into before os.replace makes the file appear whole."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_synced(path: str | Path, text: str) -> None:
    """Write and fsync: the text is on disk before anything names the file."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write, fsync, then rename: readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = tmp_path(path)
    write_synced(tmp, text)
    os.replace(tmp, path)


@contextmanager
def exclusive(lock: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an advisory lock on file `lock` (created if missing) for the block; raise `busy()` at once
    if another process holds it. One writer per artifact: two would interleave or delete each other's
    files. The lock goes with the process, so a killed writer never leaves a stale one."""
    import fcntl

    with open(lock, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def versions() -> dict[str, str]:
    """Versions that decide whether an artifact's numbers can be reproduced."""
    import torch
    import transformers

    from . import __version__

    return {"eds": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def resumable_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a resumable JSONL file in order, a line cut by a crash skipped (none if no file)."""
    path = Path(path)
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue


def read_records(path: str | Path, key: str = "key") -> dict[str, dict[str, Any]]:
    """Records of a resumable JSONL file by `key`, the last one winning. A line cut by a crash is
    skipped, so that item is simply done again: nothing is lost or counted twice."""
    return {r[key]: r for r in resumable_rows(path)}


@contextmanager
def appending(path: str | Path | None) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Append records to a resumable JSONL file, each flushed as it is made (a crash loses at most
    the line being written). A line cut by an earlier crash is closed first, so the next record
    starts on a line of its own. With no path, records are dropped."""
    if path is None:
        yield lambda rec: None
        return
    path = Path(path)
    with open(path, "a", encoding="utf-8") as out:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            out.write("\n")

        def write(rec: dict[str, Any]) -> None:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()

        yield write


def jsonl_objects(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "FILE, line N", object) for each non-blank line of a JSONL file, gzipped or not; a
    line that is not a JSON object raises `error` naming the file and line. Prompt files, judge sets,
    MMLU and HumanEval are read through here, so their errors read the same (eds's own resumable
    records are read by `read_records`, which skips a line cut by a crash instead)."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield n, where, obj
