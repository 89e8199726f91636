"""Phase 2: train one energy model per layer on collected states, score every layer on held-out
prompts (AUROC of -E for good vs bad), calibrate its energy threshold, and keep the best layers."""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .collect import Collection, collection_dtypes
from .energy import EnergyMLP, auroc, calibrate_threshold, info_nce

POSITIONS = ("prompt", "gen", "all")


class TrainError(ValueError):
    """Training cannot run as asked (one class empty, bad layer index, ...)."""


@dataclass
class TrainConfig:
    """How to train the per-layer energy models. Recorded in the bundle."""

    positions: str = "prompt"  # prompt: last prompt token; gen: generated tokens; all: both
    layers: tuple[int, ...] | None = None  # layers to train and score; None = every layer
    top_k: int = 3
    widths: tuple[int, ...] | None = None  # None = scaled to the hidden size
    temperature: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256  # half good, half bad
    max_steps: int = 600
    eval_every: int = 10
    patience: int = 100  # steps without a better validation AUROC before stopping
    val_fraction: float = 0.2
    val_datasets: tuple[str, ...] = ()  # sources kept out of training entirely, scored on
    labels: tuple[str, ...] | None = None  # train on prompts of these labels only (e.g. harmful: refuse models)
    allow_test: bool = False  # train on test-split prompts too (then no result on those sets is held out)
    seed: int = 0

    def validate(self, num_layers: int) -> None:
        if self.positions not in POSITIONS:
            raise TrainError(f"positions must be one of {POSITIONS}, not {self.positions!r}")
        if self.layers is not None:
            bad = [layer for layer in self.layers if not 0 <= layer < num_layers]
            if bad:
                raise TrainError(f"layer indices {bad} out of range: the model has layers 0..{num_layers - 1}")
        if not 0 < self.val_fraction < 1:
            raise TrainError("val_fraction must be in (0, 1)")
        if self.top_k < 1:
            raise TrainError("top_k must be >= 1")


@dataclass
class LayerResult:
    layer: int
    val_auroc: float
    train_auroc: float
    val_loss: float
    threshold: float
    steps: int
    seconds: float


@dataclass
class TrainResult:
    """Every trained layer's model and scores; `chosen` are the top-k layers by validation AUROC."""

    models: dict[int, EnergyMLP]
    results: list[LayerResult]
    chosen: list[int]
    config: TrainConfig
    data_summary: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        return [asdict(r) | {"chosen": r.layer in self.chosen} for r in self.results]


def split_rows(records: Sequence[dict[str, Any]], cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Train/validation split by prompt (never by position: a prompt's states are all on one side),
    stratified by dataset and outcome; `val_datasets` go wholly to validation."""
    rng = random.Random(cfg.seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((r["dataset"], r["outcome"]), []).append(i)
    train, val = [], []
    for (dataset, _), idx in sorted(groups.items()):
        if dataset in cfg.val_datasets:
            val += idx
            continue
        idx = idx[:]
        rng.shuffle(idx)
        n_val = round(len(idx) * cfg.val_fraction) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def _states(col: Collection, layer: int, rows: list[int], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the chosen positions of `rows` to ([n, H] float32, good [n])."""
    h = col.states(layer)[rows].float()  # [r, 1+k, H]
    good = col.good()[rows]
    valid = torch.cat([torch.ones(len(rows), 1, dtype=torch.bool), col.gen_valid()[rows].bool()], dim=1)
    if positions == "prompt":
        valid[:, 1:] = False
    elif positions == "gen":
        valid[:, 0] = False
    labels = good.unsqueeze(1).expand_as(valid)
    return h[valid], labels[valid]


def train_layer(
    x: torch.Tensor,
    good: torch.Tensor,
    x_val: torch.Tensor,
    good_val: torch.Tensor,
    cfg: TrainConfig,
    hidden_size: int,
) -> tuple[EnergyMLP, dict[str, float]]:
    """Train one energy model with class-balanced batches; keep the weights of the best validation AUROC.

    Validation InfoNCE loss is a poor stopping signal: it keeps rising as energies grow more confident
    while the ranking (AUROC) has long settled, so the ranking decides."""
    for name, labels in (("training", good), ("validation", good_val)):
        if labels.all() or not labels.any():
            raise TrainError(
                f"the {name} states are all one class: with positions={cfg.positions!r} this "
                "collection has no states of the other (too few generated tokens kept?)"
            )
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's random state
        torch.manual_seed(cfg.seed)
        model = EnergyMLP(hidden_size, cfg.widths)
    model.set_input_stats(x)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xg, xb = x[good], x[~good]
    half = cfg.batch_size // 2

    def score() -> float:
        model.eval()
        with torch.no_grad():
            return auroc(-model(x_val), good_val)

    best = (score(), 0, {k: v.clone() for k, v in model.state_dict().items()})
    for step in range(1, cfg.max_steps + 1):
        model.train()
        ig = torch.randint(len(xg), (min(half, len(xg)),), generator=gen)
        ib = torch.randint(len(xb), (min(half, len(xb)),), generator=gen)
        loss = info_nce(model(xg[ig]), model(xb[ib]), cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0:
            val = score()
            if val > best[0] + 1e-4:
                best = (val, step, {k: v.clone() for k, v in model.state_dict().items()})
            elif step - best[1] >= cfg.patience:
                break
    model.load_state_dict(best[2])
    model.eval().requires_grad_(False)
    with torch.no_grad():
        e_train, e_val = model(x), model(x_val)
    return model, {
        "val_loss": float(info_nce(e_val[good_val], e_val[~good_val], cfg.temperature)),
        "steps": best[1],
        "train_auroc": auroc(-e_train, good),
        "val_auroc": best[0],
        "threshold": calibrate_threshold(e_val[good_val], e_val[~good_val]),
    }


def data_source(col: Collection) -> dict[str, Any]:
    """Which collection(s) a model learned from, their label counts and a digest of the labels (so a
    bundle trained before `eds rejudge` moved a label is known to be stale), for a bundle's JSON."""
    return {
        "collection": col.manifest.get("union") or str(col.path),
        "counts": {ctx: dict(c) for ctx, c in col.counts().items()},
        "labels": labels_digest(col.records),
    }


def labels_digest(records: Sequence[dict[str, Any]]) -> str:
    """A short hash of every row's key and outcome: equal iff the same prompts carry the same labels."""
    lines = sorted(f"{r['key']}\t{r['outcome']}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def check_no_test(records: Sequence[dict[str, Any]], cfg: TrainConfig, what: str = "the collection") -> None:
    """Refuse test-split prompts unless `cfg.allow_test`: what anything is trained on is no longer held out."""
    held_out = Counter(r.get("dataset", "?") for r in records if r.get("split") == "test")
    if held_out and not cfg.allow_test:
        raise TrainError(
            f"{what} holds test-split prompts ("
            + ", ".join(f"{d}: {n}" for d, n in sorted(held_out.items()))
            + "): results on those sets would no longer be held out. Collect train splits only, "
            "or pass allow_test=True (--allow-test) knowingly"
        )


def train(col: Collection, config: TrainConfig | None = None, *, progress: bool = True) -> TrainResult:
    """Train and score an energy model for every requested layer of a collection."""
    cfg = config or TrainConfig()
    cfg.validate(col.num_layers)
    records = col.records
    check_no_test(records, cfg)
    train_rows, val_rows = split_rows(records, cfg)
    if cfg.labels is not None:
        train_rows = [i for i in train_rows if records[i]["label"] in cfg.labels]
        val_rows = [i for i in val_rows if records[i]["label"] in cfg.labels]
    for name, rows in (("training", train_rows), ("validation", val_rows)):
        outcomes = {records[i]["outcome"] for i in rows}
        for cls in ("good", "bad"):
            if cls not in outcomes:
                raise TrainError(
                    f"the {name} split has no '{cls}' rows: an energy model needs both classes "
                    f"(collect more prompts, or ones the model gets wrong and right)"
                )
    layers = list(cfg.layers) if cfg.layers is not None else list(range(col.num_layers))
    hidden = col.fingerprint.hidden_size
    models: dict[int, EnergyMLP] = {}
    results: list[LayerResult] = []

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]train[/] layer {task.fields[layer]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best val AUROC {task.fields[best]:.3f}"),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("", total=len(layers), layer="-", best=0.0)
        for layer in layers:
            bar.update(task, layer=layer)
            t0 = time.perf_counter()
            x, good = _states(col, layer, train_rows, cfg.positions)
            xv, gv = _states(col, layer, val_rows, cfg.positions)
            model, m = train_layer(x, good, xv, gv, cfg, hidden)
            models[layer] = model
            results.append(LayerResult(layer=layer, seconds=round(time.perf_counter() - t0, 2), **m))
            bar.update(task, advance=1, best=max(r.val_auroc for r in results))
    ranked = sorted(results, key=lambda r: -r.val_auroc)
    chosen = sorted(r.layer for r in ranked[: cfg.top_k])
    summary = {
        **data_source(col),
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "datasets": sorted({r["dataset"] for r in records}),
        "judge": col.manifest.get("judge"),
        "collect_config": col.manifest.get("config"),
        # what the states were read in: a model run in another dtype gives slightly other states
        "model_dtypes": sorted(collection_dtypes(col)),
    }
    return TrainResult(models=models, results=results, chosen=chosen, config=cfg, data_summary=summary)


def plot_auroc(result: TrainResult, path: str) -> None:
    """AUROC by layer (train and validation), chosen layers marked: where people look first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r.layer for r in result.results]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(layers, [r.train_auroc for r in result.results], "o-", ms=3, label="train", color="0.6")
    ax.plot(layers, [r.val_auroc for r in result.results], "o-", ms=4, label="validation")
    for layer in result.chosen:
        r = next(r for r in result.results if r.layer == layer)
        ax.plot(layer, r.val_auroc, "*", ms=14, color="C3", label="chosen" if layer == result.chosen[0] else None)
    ax.set_xlabel("decoder layer (state entering it)")
    ax.set_ylabel("AUROC of -E (good vs bad)")
    ax.set_ylim(0.4, 1.01)
    ax.axhline(0.5, color="0.8", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"energy model by layer ({result.config.positions} positions)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
