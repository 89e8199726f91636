"""Batched generation, plain or steered: what the CLI, the main job and evaluation call."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .bundle import EnergyBundle
from .models import LoadedModel
from .steer import steer


def _gen_kwargs(lm: LoadedModel, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> dict:
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": lm.tokenizer.pad_token_id}
    if do_sample:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    bundle: EnergyBundle | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.95,
    system_prompt: str | None = None,
    progress: bool = False,
    label: str = "generate",
    **steer_overrides: Any,
) -> tuple[list[str], list[int]]:
    """Replies to single-turn prompts, steered by `bundle` if given (settings overridable).

    Returns the replies and, per prompt, how many (layer, position) states steering moved."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    replies: list[str] = []
    moved: list[int] = []
    kw = _gen_kwargs(lm, max_new_tokens, do_sample, temperature, top_p)
    with Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=len(prompts))
        for i in range(0, len(prompts), batch_size):
            batch = list(prompts[i : i + batch_size])
            enc = lm.encode(batch, system_prompt)
            ctx = steer(lm, bundle, **steer_overrides) if bundle is not None else contextlib.nullcontext()
            with torch.inference_mode(), ctx as handle:
                out = lm.model.generate(**enc, **kw)
            replies += [
                r.strip()
                for r in lm.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            ]
            if handle is not None and handle.stats.moved is not None:
                moved += handle.stats.moved.tolist()
            else:
                moved += [0] * len(batch)
            bar.advance(task, len(batch))
    return replies, moved


def stream_chat(
    lm: LoadedModel,
    messages: list[dict[str, str]],
    *,
    bundle: EnergyBundle | None = None,
    max_new_tokens: int = 512,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.95,
    **steer_overrides: Any,
) -> Iterator[str]:
    """Stream the assistant's next turn for a multi-turn conversation, piece by piece."""
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = lm.tokenizer([text], return_tensors="pt", add_special_tokens=False).to(lm.device)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kw = _gen_kwargs(lm, max_new_tokens, do_sample, temperature, top_p)
    errors: list[BaseException] = []
    stop = threading.Event()

    class _Stop(StoppingCriteria):  # lets an abandoned stream end its generation (and its hooks) early
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return stop.is_set()

    def run() -> None:
        ctx = steer(lm, bundle, **steer_overrides) if bundle is not None else contextlib.nullcontext()
        try:
            with torch.inference_mode(), ctx:
                lm.model.generate(**enc, **kw, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop()]))
        except BaseException as e:  # surfaced in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
