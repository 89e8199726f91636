"""How much steering changes what the model says to plain benign prompts.

Two numbers: the share of greedy replies that steering leaves unchanged, and the KL divergence
KL(base ‖ steered) between the next-token distributions along the *base* reply. The KL is teacher
forced: the base reply's tokens are fed one per forward with the KV cache, plainly and inside
`steer(...)`. The forcing is done by `generate` itself with a logits processor that picks the base
token, so every forward (prefill, cache, positions, which positions the steer hook moves) is exactly
the one greedy generation makes; only the choice of the next token differs."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .bundle import EnergyBundle
from .evaluate import _progress
from .generate import _gen_kwargs, generate
from .metrics import Rate
from .models import LoadedModel
from .steer import steer


class _Force:
    """Logits processor: the next token is the path's token (EOS past the path's end).

    It also keeps the argmax of the scores it is given (those the greedy choice is made from), so a
    forced steered pass tells where steered greedy decoding would first leave the path."""

    def __init__(self, paths: Tensor, prompt_len: int, eos: int) -> None:
        self.paths, self.prompt_len, self.eos = paths, prompt_len, eos
        self.argmax: dict[int, Tensor] = {}

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        t = input_ids.shape[1] - self.prompt_len
        self.argmax.setdefault(t, scores.argmax(dim=-1))
        tok = self.paths[:, t] if t < self.paths.shape[1] else torch.full_like(self.paths[:, 0], self.eos)
        out = torch.full_like(scores, -math.inf)  # a new tensor: `scores` may be the raw logits kept by generate
        out.scatter_(1, tok.to(scores.device).unsqueeze(1), 0.0)
        return out


def _eos_ids(lm: LoadedModel) -> list[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        raise ValueError("the model has no EOS token; drift needs one to end forced paths")
    return ids


def _decode(lm: LoadedModel, ids: Tensor) -> list[str]:
    """Exactly as eds.generate turns generated ids into replies."""
    return [r.strip() for r in lm.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _paths_from_greedy(gen: Tensor, eos: list[int]) -> list[list[int]]:
    """Generated ids [B, L] -> each row's reply tokens up to and including its first EOS."""
    out = []
    for row in gen.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        out.append(row if cut is None else row[: cut + 1])
    return out


def forced_logits(
    lm: LoadedModel,
    enc: dict[str, Tensor],
    paths: Sequence[Sequence[int]],
    *,
    bundle: EnergyBundle | None = None,
    **steer_overrides: Any,
) -> tuple[Tensor, Tensor, list[int]]:
    """Raw next-token logits [B, T, V] (float32) along given reply token paths, plain or steered.

    Position t is the distribution after the prompt and the path's first t tokens, computed by the
    same forward calls greedy generation makes. Also returns the greedy choices [B, T] at each
    position and, per row, how many states steering moved. Positions past a row's path are junk."""
    if any(len(p) == 0 for p in paths):
        raise ValueError("every forced path needs at least one token")
    eos = _eos_ids(lm)[0]
    steps = max(len(p) for p in paths)
    pad = torch.full((len(paths), steps), eos, dtype=torch.long)
    for i, p in enumerate(paths):
        pad[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    force = _Force(pad, enc["input_ids"].shape[1], eos)
    from transformers import LogitsProcessorList

    kw = _gen_kwargs(lm, steps, False, 0.7, 0.95)
    ctx = steer(lm, bundle, **steer_overrides) if bundle is not None else contextlib.nullcontext()
    with torch.inference_mode(), ctx as handle:
        out = lm.model.generate(
            **enc,
            **kw,
            logits_processor=LogitsProcessorList([force]),
            return_dict_in_generate=True,
            output_logits=True,
        )
    logits = torch.stack([x.float() for x in out.logits], dim=1)  # [B, T', V], T' <= steps
    if logits.shape[1] < steps:  # every row ended early on an EOS of its path
        logits = torch.cat([logits, logits.new_zeros(logits.shape[0], steps - logits.shape[1], logits.shape[2])], 1)
    greedy = torch.stack([force.argmax.get(t, pad[:, t].to(logits.device)) for t in range(steps)], dim=1)
    moved = handle.stats.moved.tolist() if handle is not None and handle.stats.moved is not None else [0] * len(paths)
    return logits, greedy.cpu(), moved


def kl_per_position(base_logits: Tensor, steered_logits: Tensor) -> Tensor:
    """KL(base ‖ steered) in nats of the softmax distributions, over the last dim, in float32."""
    lb = torch.log_softmax(base_logits.float(), dim=-1)
    ls = torch.log_softmax(steered_logits.float(), dim=-1)
    return (lb.exp() * (lb - ls)).sum(dim=-1).clamp_min(0.0)  # clamp: float rounding only, KL >= 0


@dataclass
class DriftResult:
    """Unchanged replies and KL(base ‖ steered) along the base replies, per prompt in `records`."""

    unchanged: Rate
    mean_kl: float  # per prompt: mean over its reply's positions; then mean over prompts
    first_token_kl: float  # mean over prompts of the KL at the first reply position
    kl_quantiles: dict[str, float]  # of the per-prompt mean KL
    positions: int  # reply positions scored, all prompts together
    steered: Rate  # prompts with at least one state moved (the harm gate may hold some back)
    max_new_tokens: int
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.unchanged.n

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "unchanged_share": self.unchanged.value,
            "unchanged": self.unchanged.to_dict(),
            "mean_kl": self.mean_kl,
            "first_token_kl": self.first_token_kl,
            "kl_quantiles": self.kl_quantiles,
            "positions": self.positions,
            "steered_share": self.steered.value,
            "max_new_tokens": self.max_new_tokens,
            "seconds": round(self.seconds, 2),
            "records": self.records,
        }


def measure_drift(
    lm: LoadedModel,
    bundle: EnergyBundle,
    prompts: Sequence[str],
    *,
    base_replies: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    **steer_overrides: Any,
) -> DriftResult:
    """Share of greedy replies steering leaves unchanged, and KL(base ‖ steered) along the base replies.

    Without `base_replies` the base replies are generated here (greedy, as eds.generate does) and
    forced token for token; with them, their tokenization (cut to `max_new_tokens`) is the path."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("measure_drift needs at least one prompt")
    if base_replies is not None and len(base_replies) != len(prompts):
        raise ValueError(f"{len(base_replies)} base replies for {len(prompts)} prompts")
    eos = _eos_ids(lm)
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    bar = _progress(progress, "drift")
    task = bar.add_task("", total=len(prompts))
    bar.start()
    try:
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i : i + batch_size]
            enc = lm.encode(batch)
            if base_replies is None:
                kw = _gen_kwargs(lm, max_new_tokens, False, 0.7, 0.95)
                with torch.inference_mode():
                    out = lm.model.generate(**enc, **kw, return_dict_in_generate=True, output_logits=True)
                gen = out.sequences[:, enc["input_ids"].shape[1] :]
                base_text = _decode(lm, gen)
                paths = _paths_from_greedy(gen.cpu(), eos)
                base_logits = torch.stack([x.float() for x in out.logits], dim=1)
            else:
                base_text = [r.strip() for r in base_replies[i : i + batch_size]]
                paths = [
                    lm.tokenizer.encode(r, add_special_tokens=False)[:max_new_tokens] or [eos[0]] for r in base_text
                ]
                base_logits, _, _ = forced_logits(lm, enc, paths)
            steered_logits, greedy, moved = forced_logits(lm, enc, paths, bundle=bundle, **steer_overrides)
            steps = max(len(p) for p in paths)
            kl = kl_per_position(base_logits[:, :steps], steered_logits[:, :steps]).cpu()
            steered_text, _ = generate(
                lm, batch, bundle=bundle, max_new_tokens=max_new_tokens, batch_size=len(batch), **steer_overrides
            )
            for j, (p, path) in enumerate(zip(batch, paths, strict=True)):
                m = len(path)
                off = [t for t in range(m) if int(greedy[j, t]) != path[t]]
                records.append(
                    {
                        "prompt": p,
                        "base": base_text[j],
                        "steered": steered_text[j],
                        "unchanged": base_text[j] == steered_text[j],
                        "positions": m,
                        "kl_mean": float(kl[j, :m].mean()),
                        "kl_first": float(kl[j, 0]),
                        "kl_max": float(kl[j, :m].max()),
                        "first_divergence": off[0] if off else None,
                        "states_moved": moved[j],
                    }
                )
            bar.advance(task, len(batch))
    finally:
        bar.stop()
    per_prompt = torch.tensor([r["kl_mean"] for r in records], dtype=torch.float64)
    return DriftResult(
        unchanged=Rate(sum(r["unchanged"] for r in records), len(records)),
        mean_kl=float(per_prompt.mean()),
        first_token_kl=float(sum(r["kl_first"] for r in records) / len(records)),
        kl_quantiles={
            "p50": float(per_prompt.quantile(0.5)),
            "p90": float(per_prompt.quantile(0.9)),
            "max": float(per_prompt.max()),
        },
        positions=sum(r["positions"] for r in records),
        steered=Rate(sum(r["states_moved"] > 0 for r in records), len(records)),
        max_new_tokens=max_new_tokens,
        seconds=time.perf_counter() - t0,
        records=records,
    )
