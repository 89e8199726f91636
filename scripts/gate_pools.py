"""Which read-out of the prompt a harmfulness gate should use: last token, mean, or mean of the user's text.

`--gate-pool mean` averages every token of the chat-formatted prompt, the system prompt and template
included. Those tokens come before the request, so under causal attention their states are the same
for every prompt: the mean is then a blend of one constant and the request, weighted by the request's
length, and a short request (XSTest, OKTest) is mostly constant. `user` (`--gate-pool user`) averages
the tokens of the user's text alone: the template's fixed token counts before and after it are masked
out by position, as steering does (checked per prompt against the template's own tokens).

From one forward per batch this reads all three at each `--layer`, on prompts only (no generation:
a gate learns from prompts and dataset labels), and reports two things per pooling and layer:
- leave one `contrast` type out (and `tense_contrast`, apart), train prompts only: AUROC on the unseen
  type, and at the threshold set on the held-out fifth the share of its benign prompts passed and of
  its harmful ones flagged (as scripts/gate_loso.py, without the base-refusal column: no replies here);
- on the tune's val sets plus `tense_val`, the gate trained on all train prompts: per source the
  share of harmful flagged and benign passed at each recall.
States are cached under `--cache` per prompt set. Run from the repository root, e.g.
    python scripts/gate_pools.py --layer 10 --layer 13 --layer 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from gate_flags import val_table
from gate_loso import TENSE, TYPED, TYPES
from rich.progress import track
from safetensors.torch import load_file, save_file

from eds import DEFAULT_MODEL, load_model
from eds.data import GATE_MIXTURE, RECIPE_MIXTURE, Prompt, load_many
from eds.energy import auroc
from eds.evaluate import labelled_prompts
from eds.models import LoadedModel, layer_input
from eds.probe import GATE_WIDTH, POOLS, check_user_spans, fit_probe, pool_states, threshold_for
from eds.train import TrainConfig, split_rows
from eds.tune import TuneConfig


class _Stop(Exception):
    pass


def layer_reads(
    lm: LoadedModel,
    batches: Iterable[dict[str, torch.Tensor]],
    layers: list[int],
    read: Callable[[int, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    *,
    total: int,
    description: str,
) -> dict[str, torch.Tensor]:
    """Run each left-padded batch (`input_ids`, `attention_mask`) forward only up to the last of `layers`,
    and concatenate over batches what `read(layer, states entering it, attention mask)` returns
    (`{key: [B, H]}`, cast to float32 by `read`)."""
    last, mask, seen = max(layers), {}, {}
    out: dict[str, list[torch.Tensor]] = {}

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            seen.update(read(layer, layer_input(args, kwargs), mask["att"]))
            if layer == last:
                raise _Stop

        return hook

    handles = [lm.layers[layer].register_forward_pre_hook(make_hook(layer), with_kwargs=True) for layer in layers]
    try:
        for enc in track(batches, total=total, description=description):
            mask["att"] = enc["attention_mask"]
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
            try:
                with torch.inference_mode():
                    lm.model(**enc, position_ids=positions, use_cache=False)
            except _Stop:
                pass
            for key, states in seen.items():
                out.setdefault(key, []).append(states.cpu())
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in out.items()}


def pooled_states(lm: LoadedModel, prompts: list[str], layers: list[int], bs: int = 16) -> dict[str, torch.Tensor]:
    """{f'{pool}.{layer}': [N, H] float32} for every pooling, from one forward per batch, pooled by the
    function steering uses (`eds.probe.pool_states`; the user's text found by the template's span)."""
    span = check_user_spans(lm, prompts, None)

    def read(layer: int, h: torch.Tensor, att: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{pool}.{layer}": pool_states(h, att, pool, span).float() for pool in POOLS}

    batches = (lm.encode(prompts[i : i + bs]) for i in range(0, len(prompts), bs))
    total = -(-len(prompts) // bs)
    return layer_reads(lm, batches, layers, read, total=total, description=f"states of {len(prompts)} prompts")


def cache_states(cache: Path, name: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`cache/name.safetensors` if it exists, else `compute()` written there atomically."""
    path = cache / f"{name}.safetensors"
    if path.exists():
        return load_file(str(path))
    states = compute()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in states.items()}, str(tmp))
    tmp.replace(path)
    return states


def cached(lm: LoadedModel, prompts: list[str], layers: list[int], cache: Path) -> dict[str, torch.Tensor]:
    head = [json.dumps(lm.fingerprint.to_dict(), sort_keys=True), lm.dtype_name, str(lm.device)]
    head += [lm.chat_texts(["<prompt>"])[0], str(sorted(layers)), "pools:" + ",".join(POOLS)]
    key = hashlib.sha256("\n".join([*head, *prompts]).encode()).hexdigest()[:16]
    return cache_states(cache, key, lambda: pooled_states(lm, prompts, sorted(layers)))


def gate_train_prompts() -> tuple[list[list[Prompt]], list[Prompt]]:
    """The gates' training prompts (the sixth bundle's gate data, `RECIPE_MIXTURE + GATE_MIXTURE`): per
    spec, as `cached` keys their states, and flat with each text once (first seen), as gates train."""
    per_spec = [load_many([spec], seed=0) for spec in (*RECIPE_MIXTURE, *GATE_MIXTURE)]
    seen: set[str] = set()
    kept = [p for ps in per_spec for p in ps if not (p.prompt in seen or seen.add(p.prompt))]
    return per_spec, kept


def train_record(p: Prompt) -> dict[str, str]:
    """What `split_rows` and the leave-one-type-out folds read of a training prompt."""
    return {"label": p.label, "dataset": p.dataset, "category": p.category, "outcome": p.label}


def gate_train_set(
    lm: LoadedModel, layers: list[int], cache: Path
) -> tuple[dict[str, torch.Tensor], list[dict[str, str]]]:
    """The gates' training prompts (`gate_train_prompts`): their pooled states (one cache entry per spec)
    and records, de-duplicated by text."""
    per_spec, kept = gate_train_prompts()
    states = [cached(lm, [p.prompt for p in ps], layers, cache) for ps in per_spec]
    first: dict[str, int] = {}
    for i, p in enumerate(p for ps in per_spec for p in ps):
        first.setdefault(p.prompt, i)
    keep = torch.tensor([first[p.prompt] for p in kept])
    return {k: torch.cat([s[k] for s in states])[keep] for k in states[0]}, [train_record(p) for p in kept]


def val_columns(
    train: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    harmful: torch.Tensor,
    split: tuple[torch.Tensor, torch.Tensor],
    keys: list[str],
    recalls: list[float],
    seed: int,
) -> list[tuple[str, list[bool]]]:
    """For each read-out `key` ('pool.layer'): a gate trained on the train rows of `split`, its thresholds
    set on the held-out rows at each recall; a column per recall of which val prompts it flags."""
    tr, va = split
    columns = []
    for key in keys:
        x = train[key]
        probe = fit_probe(x[tr], harmful[tr], width=GATE_WIDTH, pool="last", seed=seed)
        with torch.no_grad():
            held, lo = probe(x[va]), probe(val[key])
        a = float(auroc(held, harmful[va]))
        for r in recalls:
            th = threshold_for(held, harmful[va], r)["threshold"]
            columns.append((f"{key.replace('.', '@')} {r} (held-out AUROC {a:.3f})", (lo > th).tolist()))
    return columns


#: the last token's and the user's text's states side by side: one gate that can use either
CONCAT = "last+user"


def with_concat(states: dict[str, torch.Tensor], layers: list[int]) -> dict[str, torch.Tensor]:
    return states | {
        f"{CONCAT}.{layer}": torch.cat([states[f"last.{layer}"], states[f"user.{layer}"]], 1) for layer in layers
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=int, action="append", required=True)
    ap.add_argument("--recall", type=float, action="append", help="default 0.9 and 0.95")
    ap.add_argument("--pool", action="append", choices=[*POOLS, CONCAT], help="default: the three poolings")
    ap.add_argument("--set", action="append", help="val sets (default: the tune's and tense_val)")
    ap.add_argument("--no-loso", action="store_true", help="val sets only")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="whose states the gates read")
    ap.add_argument("--dtype", default="default")
    ap.add_argument("--cache", type=Path, default=Path("runs/gate-pools-cache"))
    args = ap.parse_args()
    recalls, pools, layers = args.recall or [0.9, 0.95], args.pool or list(POOLS), sorted(set(args.layer))
    lm = load_model(args.model, dtype=args.dtype)
    cfg = TrainConfig()

    states, recs = gate_train_set(lm, layers, args.cache)
    train = with_concat(states, layers)
    harmful = torch.tensor([r["label"] == "harmful" for r in recs])
    tr_all, va_all = split_rows(recs, cfg)
    kinds = {**TYPES, **TENSE}
    kind = [
        next((t for t, c in kinds.items() if r["category"] in c), None) if r["dataset"] in TYPED else None for r in recs
    ]
    left_out = {t: out for t in kinds if (out := torch.tensor([k == t for k in kind])).any()}
    folds = {
        t: (torch.tensor([i for i in tr_all if not out[i]]), torch.tensor([i for i in va_all if not out[i]]))
        for t, out in left_out.items()
    }
    print(f"{len(recs)} train prompts ({int(harmful.sum())} harmful); dtype {lm.dtype_name}")

    if args.no_loso:
        pools_loso: list[str] = []
    else:
        pools_loso = pools
        print("\n## Leave one type out (train prompts only)\n")
        print(
            "| pool | layer | left out | AUROC, unseen | "
            + " | ".join(f"{r}: benign passed | harmful flagged" for r in recalls)
            + " |"
        )
        print("|---|---|---|---|" + "---|---|" * len(recalls))
    for pool in pools_loso:
        for layer in layers:
            x = train[f"{pool}.{layer}"]
            res = {}
            for t, (tr, va) in folds.items():
                probe = fit_probe(x[tr], harmful[tr], width=GATE_WIDTH, pool="last", seed=cfg.seed)
                with torch.no_grad():
                    lo = probe(x)
                res[t] = (lo, {r: threshold_for(lo[va], harmful[va], r)["threshold"] for r in recalls})
            for label, group in (("contrast types", TYPES), ("tense questions", TENSE)):
                done = [t for t in group if t in res]
                aucs = [float(auroc(res[t][0][left_out[t]], harmful[left_out[t]])) for t in done]
                cells = []
                for r in recalls:
                    b = h = nb = nh = 0
                    for t in done:
                        out, (lo, th) = left_out[t], res[t]
                        flag = lo > th[r]
                        b += int((~flag[out & ~harmful]).sum())
                        nb += int((out & ~harmful).sum())
                        h += int(flag[out & harmful].sum())
                        nh += int((out & harmful).sum())
                    cells += [f"{b}/{nb} ({b / max(nb, 1):.0%})", f"{h}/{nh} ({h / max(nh, 1):.0%})"]
                print(f"| {pool} | {layer} | {label} | {sum(aucs) / len(aucs):.3f} | " + " | ".join(cells) + " |")

    print("\n## Val sets (gate trained on all train prompts, thresholds on the held-out fifth)\n")
    sets = args.set or [
        *TuneConfig().val_sets,
        *(["tense_val:val"] if "tense_val:val" not in TuneConfig().val_sets else []),
    ]
    pairs = labelled_prompts(sets)
    val = with_concat(cached(lm, [p.prompt for _, p in pairs], layers, args.cache), layers)
    sources: dict[tuple[str, str], list[int]] = {}
    for i, (group, p) in enumerate(pairs):
        sources.setdefault((p.label, group), []).append(i)
    split = (torch.tensor(tr_all), torch.tensor(va_all))
    keys = [f"{pool}.{layer}" for pool in pools for layer in layers]
    val_table(val_columns(train, val, harmful, split, keys, recalls, cfg.seed), sources)


if __name__ == "__main__":
    main()
