"""A harmfulness gate: a small classifier (one SiLU hidden layer by default, or linear) on the last
prompt token's state that says whether the request itself is harmful, independent of how the model
answered. Steering is allowed only for sequences the probe calls benign, so an energy model that
mistakes an unfamiliar harmful request for a scary-sounding benign one cannot push it toward
compliance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .collect import Collection
from .energy import auroc
from .models import LoadedModel, layer_input
from .train import TrainConfig, check_no_test, split_rows

#: hidden width of the gate trained by default. On the same training data, a linear gate (width 0)
#: let through 36% of the val discrimination requests at its 90%-recall threshold, and one SiLU layer
#: of 256 lets through 14% while passing as many benign val prompts (97.4% against 97.7%;
#: scripts/gate_val.py, docs/results.md)
GATE_WIDTH = 256


#: what the gate reads from a prompt's states at its layer: the last prompt token (the state the
#: model's answer grows from), or the mean over the prompt's tokens. On prompt types a gate never saw
#: (leave-one-category-out on the training collections, scripts/gate_loso.py) the mean at a middle
#: layer sorted harmful from benign better (AUROC 0.92 against 0.87 for the last token): the last
#: token carries the model's own refusal intent, which false refusals share with harmful requests.
#: "user" is the mean over the user's text alone: the chat format's system message and template
#: tokens come before the request, so under causal attention their states are the same for every
#: prompt, and in "mean" they swamp a short request (24 of a 35-token XSTest prompt's tokens for the
#: default model).
POOLS = ("last", "mean", "user")


def pool_states(hidden: Tensor, mask: Tensor | None, pool: str, span: tuple[int, int] | None = None) -> Tensor:
    """[B, T, H] states of a prompt (left-padded; `mask` [B, T], 1 = token, None = no padding) -> [B, H].
    `span` (pool "user"): the chat format's token counts before and after the user's text
    (`LoadedModel.template_span`), masked out by position, with no token ids and no host sync. The
    mean is summed in float32 without a float32 copy of the whole prompt."""
    if pool == "last":
        return hidden[:, -1, :]
    if pool not in POOLS:
        raise ValueError(f"unknown gate pooling {pool!r}; use one of {', '.join(POOLS)}")
    if pool == "mean" and mask is None:
        return hidden.sum(1, dtype=torch.float32) / hidden.shape[1]
    t = hidden.shape[1]
    keep = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if mask is None else mask.bool()
    keep = keep.to(hidden.device)
    if pool == "user":
        if span is None:
            raise ValueError("a 'user' pooling needs the chat format's span (LoadedModel.template_span)")
        before, after = span
        tokens_so_far = keep.long().cumsum(1)  # left padding first: a row's own tokens counted from its start
        keep = keep & (tokens_so_far > before)
        keep[:, max(t - after, 0) :] = False
    m = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1, dtype=torch.float32) / m.sum(1, dtype=torch.float32).clamp_min(1.0)


def check_user_spans(lm: LoadedModel, prompts: Sequence[str], system_prompt: str | None) -> tuple[int, int]:
    """The chat format's span (`LoadedModel.template_span`), after checking that every prompt's chat
    text starts and ends with the template's own tokens, so that the span masks exactly the user's
    text (a prompt whose edges merged with the template's would be pooled a token off)."""
    head, tail = lm.template_tokens(system_prompt)
    for p, text in zip(prompts, lm.chat_texts(list(prompts), system_prompt), strict=True):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= len(head) + len(tail) or ids[: len(head)] != head or ids[len(ids) - len(tail) :] != tail:
            raise ValueError(
                f"the chat format's tokens merge with the prompt {p[:60]!r}: a 'user' gate cannot find its text "
                "by position (use the 'mean' or 'last' pooling)"
            )
    return len(head), len(tail)


def padding_mask(mask: Any, start: int, t: int) -> Tensor | None:
    """The [B, t] token mask (True = a real token) of a forward's t new positions, which sit at key
    positions start..start+t-1 (after `start` cached ones; a static cache's keys run on past them), from
    the attention mask the model's forward receives: 2-D (1 = token), or 4-D as static caches pass it
    (bool: True = attended; float: 0 = attended), read from the last query row; a dict of such masks
    (one per attention kind) is read by its full-attention entry. None where none can be read."""
    if isinstance(mask, dict):
        mask = mask.get("full_attention", next(iter(mask.values()), None))
    if not isinstance(mask, Tensor):
        return None
    if mask.dim() == 2:
        return mask[:, start : start + t].bool()
    if mask.dim() == 4:
        row = mask[:, 0, -1, start : start + t]
        return row if row.dtype == torch.bool else row == 0
    return None


class HarmProbe(nn.Module):
    """p(harmful | h) = sigmoid(f((h - mean) / std)), f linear (width 0) or one SiLU hidden layer; h is
    the prompt's states at the gate layer pooled by `pool`."""

    def __init__(self, hidden_size: int, width: int = 0, pool: str = "last", span: tuple[int, int] | None = None):
        super().__init__()
        if width < 0:
            raise ValueError(f"gate width must be >= 0, got {width}")
        if pool not in POOLS:
            raise ValueError(f"unknown gate pooling {pool!r}; use one of {', '.join(POOLS)}")
        if (pool == "user") != (span is not None):
            raise ValueError("a 'user' gate needs the chat format's span (tokens before and after the text), no other")
        self.width = width
        self.pool = pool
        self.span = None if span is None else (int(span[0]), int(span[1]))
        self.hidden = nn.Linear(hidden_size, width) if width else None
        self.linear = nn.Linear(width or hidden_size, 1)
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))

    @property
    def kind(self) -> str:
        """What it is, for tables and logs: "linear" or "width N", and the pooling unless the last token."""
        kind = f"width {self.width}" if self.width else "linear"
        read = {"last": None, "mean": "mean of the prompt", "user": "mean of the user's text"}[self.pool]
        return kind if read is None else f"{kind}, {read}"

    def forward(self, h: Tensor) -> Tensor:
        """Logit of harmfulness for states [..., H], float32."""
        z = (h.float() - self.mean) / self.std
        if self.hidden is not None:
            z = nn.functional.silu(self.hidden(z))
        return self.linear(z).squeeze(-1)


@dataclass
class ProbeResult:
    probe: HarmProbe
    layer: int
    threshold: float  # logit above which a request counts as harmful
    val_auroc: float
    harmful_caught: float  # share of validation harmful prompts above the threshold
    benign_passed: float  # share of validation benign prompts below it
    table: list[dict[str, float]]
    # thresholds for other recall targets at the chosen layer, so tuning can trade recall for compliance
    by_recall: dict[str, dict[str, float]] = field(default_factory=dict)


#: gate recall targets whose thresholds are kept in the bundle (eds tune --gate-recall picks among them)
RECALLS = (0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def stored_recalls(harmful_recall: float) -> list[float]:
    """The recalls a gate trained for `harmful_recall` stores thresholds for (`with_gate_recall` picks one)."""
    return sorted({*RECALLS, harmful_recall})


def threshold_for(logits: Tensor, harmful: Tensor, recall: float) -> dict[str, float]:
    """The threshold that catches `recall` of the harmful rows, and what it catches and passes."""
    harm = logits[harmful].sort().values
    k = int((1 - recall) * len(harm))
    threshold = float(harm[k]) - 1e-6 if len(harm) else 0.0
    return {
        "threshold": threshold,
        "harmful_caught": float((logits[harmful] > threshold).float().mean()),
        "benign_passed": float((logits[~harmful] <= threshold).float().mean()),
    }


def fit_probe(
    x: Tensor,
    harmful: Tensor,
    *,
    width: int = 0,
    pool: str = "last",
    span: tuple[int, int] | None = None,
    weight_decay: float = 1e-2,
    epochs: int = 300,
    seed: int = 0,
) -> HarmProbe:
    """Class-balanced logistic regression (or a one-hidden-layer classifier), full batch: a few
    thousand states at most. `pool` (and `span`) only label what `x` holds."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = HarmProbe(x.shape[1], width, pool, span)
    probe.mean.copy_(x.mean(0))
    probe.std.copy_(x.std(0).clamp_min(1e-4))
    pos_weight = (~harmful).sum() / harmful.sum().clamp_min(1)
    if width:  # the recipe compared with the linear gate on val (docs/results.md)
        opt: torch.optim.Optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for _ in range(epochs):
        loss = loss_fn(probe(x), harmful.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval().requires_grad_(False)


def check_same_tokenizer(gate_model: LoadedModel, lm: LoadedModel) -> None:
    """Raise ValueError unless `gate_model` reads token ids as `lm` makes them (equal vocabulary digests):
    a gate model reads the steered model's prompt ids."""
    if gate_model.tokenizer_digest() != lm.tokenizer_digest():
        raise ValueError(
            f"the gate model {gate_model.name} does not share {lm.name}'s tokenizer (the tokenizers differ): "
            "it cannot read its prompts"
        )


class _Stop(Exception):
    """Raised by the last hook of `read_pooled`: the layers after it are not needed."""


def read_pooled(
    lm: LoadedModel,
    input_ids: Tensor,
    mask: Tensor | None,
    layers: Sequence[int],
    pool: str,
    span: tuple[int, int] | None,
) -> dict[int, Tensor]:
    """{layer: [B, H] float32}: the states entering each of `layers` for a left-padded batch of token ids,
    pooled by `pool`, from one forward of `lm` that stops after the last of them (on `lm`'s device).
    Positions are numbered as `generate` numbers a left-padded row (from its first token), so models
    with absolute positions see the states they see while generating."""
    layers = sorted(set(layers))
    if not layers or layers[0] < 0 or layers[-1] >= len(lm.layers):
        raise ValueError(f"gate layers must lie in 0..{len(lm.layers) - 1}, got {layers}")
    device = lm.device
    ids = input_ids.to(device)
    att = torch.ones_like(ids) if mask is None else mask.to(device=device, dtype=torch.long)
    seen: dict[int, Tensor] = {}

    def make_hook(layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            seen[layer] = pool_states(layer_input(args, kwargs), att, pool, span).float()
            if layer == layers[-1]:
                raise _Stop

        return hook

    handles = [lm.layers[layer].register_forward_pre_hook(make_hook(layer), with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, attention_mask=att, position_ids=(att.cumsum(-1) - 1).clamp_min(0), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


def gate_states(
    lm: LoadedModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    pool: str,
    *,
    system_prompt: str | None = None,
    encoder: LoadedModel | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[int, Tensor]:
    """What a gate at each of `layers` of `lm` reads from each prompt (pooled by `pool`), {layer: [N, H]
    float32 on the CPU}, from one forward per batch that stops after the last of them: the same reading
    as the gate makes while steering, so training and use see the same features.

    `encoder` (default `lm`) turns the prompts into token ids: a gate read by another model than the
    steered one (a gate model) reads the steered model's chat-formatted ids, as it will while steering."""
    from rich.progress import track

    enc_lm = encoder or lm
    if encoder is not None and encoder is not lm:
        check_same_tokenizer(lm, encoder)
    span = check_user_spans(enc_lm, prompts, system_prompt) if pool == "user" else None
    out: dict[int, list[Tensor]] = {layer: [] for layer in sorted(set(layers))}
    starts = range(0, len(prompts), batch_size)
    for i in track(starts, description="gate states", disable=not progress, total=len(starts)):
        enc = enc_lm.encode(list(prompts[i : i + batch_size]), system_prompt)
        for layer, x in read_pooled(lm, enc["input_ids"], enc["attention_mask"], list(out), pool, span).items():
            out[layer].append(x.cpu())
    return {layer: torch.cat(v) for layer, v in out.items()}


class GateModel:
    """A gate whose probe reads another model's states (the gate model, e.g. a larger one of the same
    family), run on the steered model's prompt ids at prefill: `logits(input_ids, mask)` -> [B] float32
    on the gate model's device. Its forward stops after the gate layer."""

    def __init__(self, lm: LoadedModel, layer: int, probe: HarmProbe):
        if not 0 <= layer < len(lm.layers):
            raise ValueError(f"gate layer {layer} is not in the gate model's 0..{len(lm.layers) - 1}")
        self.lm, self.layer, self.probe = lm, layer, probe.to(lm.device).eval()

    def logits(self, input_ids: Tensor, mask: Tensor | None) -> Tensor:
        state = read_pooled(self.lm, input_ids, mask, [self.layer], self.probe.pool, self.probe.span)[self.layer]
        with torch.no_grad():
            return self.probe(state)


def train_probe(
    col: Collection,
    layers: list[int],
    *,
    harmful_recall: float = 0.97,
    width: int = GATE_WIDTH,
    config: TrainConfig | None = None,
    states: dict[int, Tensor] | None = None,
    pool: str | None = None,
    span: tuple[int, int] | None = None,
) -> ProbeResult:
    """Fit a probe at each candidate layer, keep the best by validation AUROC, and set its threshold so
    that `harmful_recall` of the validation harmful prompts are caught (kept from steering).

    The probe reads the collection's last-prompt-token states, or `states` ({layer: [N, H]}, one row per
    record, e.g. from `gate_states`) pooled by `pool` (a "user" pooling with the chat format's `span`)."""
    cfg = config or TrainConfig()
    check_no_test(col.records, cfg)
    if states is not None:
        if pool is None:  # the probe is labelled with it: say what the states are
            raise ValueError("say how the given gate states were pooled (pool=...)")
        bad = [layer for layer in layers if layer not in states or len(states[layer]) != len(col.records)]
        if bad:
            raise ValueError(f"gate states missing or of the wrong length at layers {bad}")
    elif (pool or "last") != "last":
        raise ValueError(f"a {pool!r} gate needs its states (gate_states): collections keep the last prompt token")
    pool = pool or "last"
    tr, va = split_rows(col.records, cfg)
    labels = torch.tensor([r["label"] == "harmful" for r in col.records])
    best: ProbeResult | None = None
    table = []
    for layer in layers:
        h = states[layer] if states is not None else col.states(layer)[:, 0].float()
        probe = fit_probe(h[tr], labels[tr], width=width, pool=pool, span=span, seed=cfg.seed)
        with torch.no_grad():
            logits = probe(h[va])
        yv = labels[va]
        score = auroc(logits, yv)
        at = threshold_for(logits, yv, harmful_recall)
        caught, passed = at["harmful_caught"], at["benign_passed"]
        table.append({"layer": layer, "val_auroc": score, "harmful_caught": caught, "benign_passed": passed})
        if best is None or score > best.val_auroc:
            by_recall = {str(r): threshold_for(logits, yv, r) for r in stored_recalls(harmful_recall)}
            best = ProbeResult(probe, layer, at["threshold"], score, caught, passed, table, by_recall)
    if best is None:
        raise ValueError("no probe layers given")
    best.table = table
    return best
