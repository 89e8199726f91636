"""The main job: the whole method on one model, train and val splits only for every choice, then a
side-by-side comparison on held-out test prompts. Each stage writes its results to disk and is
skipped when they are already there, so an interrupted run picks up where it stopped."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import assets
from .bundle import BundleError, EnergyBundle, SteerSettings, load_gate_model
from .collect import CollectConfig, Collection, CollectionError, collect, collection_dtypes, open_collections
from .data import GATE_MIXTURE, RECIPE_MIXTURE
from .io import write_text_atomic
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .probe import GATE_WIDTH, POOLS, check_same_tokenizer, gate_states, stored_recalls, train_probe
from .report import make_console
from .train import (
    TrainConfig,
    TrainError,
    TrainResult,
    check_no_test,
    data_source,
    labels_digest,
    plot_auroc,
    train,
)

console = make_console()


@dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "default"  # bf16 where the device computes it natively, else float32 (docs: bf16)
    out: str = "runs/main"
    collection: tuple[str, ...] = ()  # reuse existing collection folders instead of collecting
    collect_data: tuple[str, ...] = RECIPE_MIXTURE
    # prompts only the harmfulness gate learns from (collected apart, never limited): past/future-tense
    # questions and their harmful twins. In the energy models' data they cost benign compliance on val;
    # in the gate's they keep tense rephrasings refused (docs/results.md, sixth bundle)
    gate_data: tuple[str, ...] = GATE_MIXTURE
    collect_limit: int | None = 600
    positions: str = "prompt"
    top_k: int = 3
    # the 600-prompt bundle chose 0.08 of (0.03, 0.05, 0.08) in bf16 and in float32 (README): 0.03 costs a
    # val pass (about 6.5 min) that never paid
    etas: tuple[float, ...] = (0.05, 0.08)
    # steered positions tried on val: the last prompt token and the first 4 generated tokens. A refusal
    # is decided there, and what follows (code above all) is left to the model (docs/results.md)
    steer_positions: tuple[str | int, ...] = (4,)
    steps: int = 3
    mode: str = "always"
    harm_gate: bool = True
    route: bool = True
    gate_recall: float = 0.95  # the threshold trained into the bundle (the sixth bundle's choice on val)
    # gate thresholds tried on val (harmful recall; empty: the trained one) and, for a three-way gate,
    # the lower recall above whose threshold flagged rows are steered toward refusal (None: two-way)
    gate_recalls: tuple[float, ...] = ()
    route_recalls: tuple[float | None, ...] = (None,)
    gate_width: int = GATE_WIDTH  # 0: a linear gate
    gate_pool: str = "last"  # what the gate reads (probe.POOLS): the last prompt token, or a mean
    gate_layers: tuple[int, ...] | None = None  # the gate is chosen among these (default: up to the first steered)
    # the gate reads this model's states (same tokenizer, e.g. a larger model of the family); None: the steered one's
    gate_model: str | None = None
    margin: float = 0.01  # harmful refusal may fall by at most this on any val harmful source
    val_sets: tuple[str, ...] = (
        "orbench_hard:val:60",
        "contrast:val:60",
        "alpaca:val:30",
        "advbench:val:40",
        "donotanswer:val:40",
        "harmbench:val",
        "jb:eds-tense:advbench:val:20",
        "jb:eds-tense:alpaca:val:20",
        "tense_val:val",  # the tense rephrasing attack's own form (what the frames above did not show)
    )
    test_sets: tuple[str, ...] = (
        "orbench_hard:test:100",
        "xstest:test:150",
        "oktest:test:100",
        "jailbreakbench:test",
        "harmbench:test:100",
        "donotanswer:test:100",
    )
    max_new_tokens: int = 40
    batch_size: int = 16
    seed: int = 0


@dataclass
class RunResult:
    config: RunConfig
    chosen: dict[str, Any] | None
    tuning: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def gate_only_digest(col: Collection, gate_col: Collection | None) -> str | None:
    """A digest of the prompts (key, label, text) that only the gate learns from, None for none: what a
    reused bundle's gate is compared by, wherever its folders now lie."""
    if gate_col is None:
        return None
    own = {r["key"] for r in col.records}
    extra = sorted(f"{r['key']}\t{r['label']}\t{r['prompt']}" for r in gate_col.records if r["key"] not in own)
    return hashlib.sha256("\n".join(extra).encode()).hexdigest()[:16] if extra else None


def _rejudged(col: Collection) -> bool:
    return any("rejudged" in part.manifest for part in getattr(col, "parts", None) or [col])


def system_prompt_of(col: Collection) -> str | None:
    """The system prompt the collections were made with (None: the model's default), one for all."""
    parts = getattr(col, "parts", None) or [col]
    prompts = {p.manifest.get("config", {}).get("system_prompt") for p in parts}
    if len(prompts) > 1:
        raise ValueError(f"the collections were made with different system prompts: {sorted(map(str, prompts))}")
    return prompts.pop()


def _reader(lm: LoadedModel) -> dict[str, str]:
    return {"model": lm.fingerprint.name, "dtype": lm.dtype_name, "device": str(lm.device)}


def collection_dtype(col: Collection) -> str:
    """The one dtype the collections were made in (an error for several)."""
    dtypes = collection_dtypes(col)
    if len(dtypes) > 1:
        raise ValueError(f"the collections were made in different dtypes ({', '.join(sorted(dtypes))}): give --dtype")
    return dtypes.pop()


def _check_gate_model(col: Collection, lm: LoadedModel) -> None:
    """A gate that reads states through `lm` must read them as the collections' model did: same shape
    (a warning for another name), the same chat format (template and system prompt), and a warning
    for another dtype (the gate then learns states a little unlike those the energy models learned)."""
    col.fingerprint.check(lm.fingerprint, "collection")
    chat = lm.chat_texts(["<prompt>"], system_prompt_of(col))[0]
    for part in getattr(col, "parts", None) or [col]:
        if part.manifest.get("chat_format") not in (None, chat):
            raise ValueError(f"{part.path}: made with another chat format (system prompt or template) than the model's")
    if (made_in := collection_dtypes(col)) != {lm.dtype_name}:
        console.print(
            f"[yellow]the gate reads states in {lm.dtype_name}; the collections were made in "
            f"{', '.join(sorted(made_in))}[/]"
        )


def make_bundle(
    col: Collection,
    train_cfg: TrainConfig,
    steering: SteerSettings,
    *,
    harm_gate: bool = True,
    gate_recall: float = 0.97,
    gate_width: int = GATE_WIDTH,
    route: bool = False,
    gate_col: Collection | None = None,
    gate_pool: str = "last",
    gate_layers: Sequence[int] | None = None,
    lm: LoadedModel | None = None,
    gate_model: LoadedModel | None = None,
    progress: bool = True,
) -> tuple[EnergyBundle, TrainResult]:
    """Train the energy models, keep the best layers, and (by default) add a harmfulness gate fitted on
    the layers up to the first steered one.

    `gate_col` (default `col`) is what the gate learns from: a superset of `col` with prompts whose
    harmfulness the gate should know but whose replies should not shape the energy models (the gate
    reads only the prompt and its label). A gate pooling other than "last" reads states the collections
    do not keep: `lm`, the collections' model, computes them (`gate_states`). `gate_model` (a model of
    the same vocabulary, e.g. a larger one of the family) makes the gate read that model's states of the
    same prompt ids instead; steering then runs it on each prompt. `gate_layers` limits the layers the
    gate is chosen from (default: all up to the first steered one; for a gate model, up to its middle)."""
    gcol = gate_col or col
    if harm_gate:  # checked before the energy models take minutes to train
        if gate_pool not in POOLS:
            raise ValueError(f"unknown gate pooling {gate_pool!r}; use one of {', '.join(POOLS)}")
        if gate_pool != "last" or gate_model is not None:
            if lm is None:
                raise ValueError(
                    "a gate that reads the prompts through a model needs the collections' model: pass the loaded model"
                )
            _check_gate_model(gcol, lm)
        if gate_model is not None:
            assert lm is not None
            check_same_tokenizer(gate_model, lm)
        n_gate = gate_model.fingerprint.num_layers if gate_model is not None else col.num_layers
        if gate_layers is not None and (not gate_layers or min(gate_layers) < 0 or max(gate_layers) >= n_gate):
            raise ValueError(f"gate layers must lie in 0..{n_gate - 1}, got {list(gate_layers)}")
        if gate_col is not None:
            diff = col.fingerprint.mismatches(gcol.fingerprint)
            if diff:
                raise ValueError(f"the gate's collections come from another model: {'; '.join(diff)}")
            missing = {r["key"] for r in col.records} - {r["key"] for r in gcol.records}
            if missing:
                raise ValueError(
                    f"the gate's collections must hold the energy models' prompts too ({len(missing)} missing, "
                    f"e.g. {min(missing)}): pass the training collections and the gate's own, read as one"
                )
            check_no_test(gcol.records, train_cfg, what="the gate's data (--gate-data)")
    res = train(col, train_cfg, progress=progress)
    bundle = EnergyBundle.from_training(res, col.fingerprint, steering=steering)
    if harm_gate:
        if gate_model is not None:  # it runs before the steered model: any of its layers decides in time
            # past the middle, every prompt's gate forward costs more than anything found to gain from it
            default = range(gate_model.fingerprint.num_layers // 2 + 1)
            candidates = sorted(set(gate_layers)) if gate_layers is not None else list(default)
        else:
            first = min(bundle.layers)
            asked = sorted(set(gate_layers)) if gate_layers is not None else list(range(first + 1))
            candidates = [x for x in asked if x <= first]  # the gate decides before any steering
            if not candidates:
                raise ValueError(
                    f"gate layers {asked} all come after the first steered layer ({first}): the gate decides "
                    "before any steering"
                )
            if len(candidates) < len(asked) and progress:
                console.print(
                    f"[yellow]gate layers {asked[len(candidates) :]} come after the first steered layer "
                    f"({first}): left out[/]"
                )
        states, reader = None, gate_model or lm
        if gate_pool != "last" or gate_model is not None:
            assert lm is not None and reader is not None
            states = gate_states(
                reader,
                [r["prompt"] for r in gcol.records],
                candidates,
                gate_pool,
                system_prompt=system_prompt_of(gcol),
                encoder=lm,
                progress=progress,
            )
        gate = train_probe(
            gcol,
            candidates,
            harmful_recall=gate_recall,
            width=gate_width,
            config=train_cfg,
            states=states,
            pool=gate_pool,
            span=lm.template_span(system_prompt_of(gcol)) if gate_pool == "user" and lm is not None else None,
        )
        bundle.set_gate(
            gate.probe,
            gate.layer,
            gate.threshold,
            {
                "val_auroc": gate.val_auroc,
                "harmful_caught": gate.harmful_caught,
                "benign_passed": gate.benign_passed,
                "recall_target": gate_recall,
                "by_recall": gate.by_recall,
                "data": {**data_source(gcol), "gate_only": gate_only_digest(col, gcol)},
                # what read a pooled gate's states (the collections' states say it for the last token)
                **({"states_read_by": _reader(reader)} if states is not None and reader is not None else {}),
            },
            reader=None if gate_model is None else gate_model.fingerprint,
        )
        if progress:
            whose = "" if gate_model is None else f" of {gate_model.name}"
            console.print(
                f"harm gate ({gate.probe.kind}) at layer {gate.layer}{whose}: "
                f"val AUROC {gate.val_auroc:.3f}, keeps "
                f"{gate.harmful_caught:.0%} of harmful and passes {gate.benign_passed:.0%} of benign "
                "val prompts"
            )
    if route:
        if bundle.gate is None:
            raise ValueError("route=True needs the harm gate: it decides which rows go toward refusal")
        try:
            refuse = train(col, replace(train_cfg, labels=("harmful",), layers=tuple(bundle.layers)), progress=progress)
        except TrainError as e:
            raise TrainError(f"refuse models (harmful prompts only, refused vs answered): {e}") from None
        bundle.set_refuse(refuse)
        bundle.steering = replace(bundle.steering, route=True)
        if progress:
            aucs = ", ".join(f"{r.layer}: {r.val_auroc:.3f}" for r in refuse.results)
            console.print(f"refuse models (harmful prompts only; refused = good), val AUROC {aucs}")
    return bundle, res


def check_gate_options(cfg: RunConfig) -> None:
    """Gate thresholds the tune is to try must exist in the bundle it will train, and a three-way gate
    needs routing: said before collection, not at the first val candidate twenty minutes later."""
    routes = [r for r in cfg.route_recalls if r is not None]
    if (cfg.gate_recalls or routes or cfg.gate_model) and not cfg.harm_gate:
        raise ValueError("gate and route recalls and a gate model need the harm gate (drop --no-harm-gate)")
    if routes and not cfg.route:
        raise ValueError("a route recall sets a three-way gate, which steers flagged rows to refusal: needs --route")
    stored = stored_recalls(cfg.gate_recall)
    unknown = sorted({r for r in (*cfg.gate_recalls, *routes) if r not in stored})
    if unknown:
        raise ValueError(f"no gate threshold is stored for recall {unknown}; the bundle stores {stored}")


def run(cfg: RunConfig | None = None, lm: LoadedModel | None = None) -> RunResult:
    """Collect (train splits) → train energy models, gate and refuse models → tune on val splits →
    compare base and steered on test splits. Every stage resumes from what is on disk."""
    from .suite import EvalConfig, run_eval
    from .tune import TuneConfig, objective_key, tune

    cfg = cfg or RunConfig()
    if cfg.harm_gate and cfg.gate_pool not in POOLS:  # before an hour of collection
        raise ValueError(f"unknown gate pooling {cfg.gate_pool!r}; use one of {', '.join(POOLS)}")
    check_gate_options(cfg)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = lm or load_model(cfg.model, dtype=cfg.dtype)
    gate_lm = load_gate_model(cfg.gate_model, lm) if cfg.gate_model and cfg.harm_gate else None

    console.rule("[bold]1. collect (train splits)")
    if cfg.collection:
        col = open_collections(cfg.collection)
        col.fingerprint.check(lm.fingerprint, "collection")
    else:
        data = cfg.collect_data
        if any(s.startswith("jb:pyrit-") for s in data) and not assets.is_ready("pyrit-jailbreaks"):
            console.print(
                "[yellow]jailbreak templates not fetched (`eds fetch --assets`): collecting without the "
                "jailbreak-wrapped train prompts[/]"
            )
            data = tuple(s for s in data if not s.startswith("jb:pyrit-"))
        col = collect(lm, out / "collect", CollectConfig(data=data, limit=cfg.collect_limit, seed=cfg.seed))
    console.print({ctx: dict(c) for ctx, c in col.counts().items()})
    gate_col = None
    if cfg.gate_data and cfg.harm_gate:
        console.print(f"the gate's own prompts: {', '.join(cfg.gate_data)}")
        extra = collect(lm, out / "collect-gate", CollectConfig(data=cfg.gate_data, seed=cfg.seed))
        try:
            gate_col = open_collections([*(cfg.collection or [out / "collect"]), extra.path])
        except CollectionError as e:
            raise CollectionError(f"{e} (the gate's own prompts: leave them out with --no-gate-data)") from None

    console.rule("[bold]2. train energy models (validation split of the collection)")
    bundle_dir = out / "bundle"
    tcfg = TrainConfig(positions=cfg.positions, top_k=cfg.top_k, seed=cfg.seed)
    gate = cfg.gate_width if cfg.harm_gate else None
    wanted = {
        "train": json.loads(json.dumps(asdict(tcfg))),
        "gate": gate,
        "gate pool": cfg.gate_pool if cfg.harm_gate else None,
        "gate model": gate_lm.fingerprint.to_dict() if gate_lm is not None else None,  # None without a gate
        "gate-only prompts": gate_only_digest(col, gate_col),  # None without a gate: gate_col is None then
        "route": cfg.route,
        "labels": labels_digest(col.records),  # `eds rejudge` may have moved labels since
    }
    try:
        bundle = EnergyBundle.load(bundle_dir)
        bundle.check(lm)
        made = {
            "train": bundle.train_config,
            "gate": bundle.gate.width if bundle.gate is not None else None,
            "gate pool": bundle.gate.pool if bundle.gate is not None else None,
            "gate model": bundle.gate_reader.to_dict() if bundle.gate_reader is not None else None,
            "gate-only prompts": (bundle.gate_metrics.get("data") or {}).get("gate_only"),
            "route": bool(bundle.refuse_models),
            # bundles from before labels were hashed: stale only if a collection was relabelled since
            "labels": bundle.data_summary.get("labels", None if _rejudged(col) else wanted["labels"]),
        }
        if made != wanted:
            raise BundleError(f"made with other settings ({', '.join(k for k in wanted if made[k] != wanted[k])})")
        if cfg.harm_gate and cfg.gate_layers is not None and bundle.gate_layer not in cfg.gate_layers:
            raise BundleError(f"made with a gate at layer {bundle.gate_layer}, not among {list(cfg.gate_layers)}")
        if cfg.harm_gate:  # the threshold asked for now, from those stored at training
            bundle = bundle.with_gate_recall(cfg.gate_recall)
        console.print(f"reusing {bundle_dir} (layers {bundle.layers})")
    except BundleError as e:  # missing, damaged, for another model or other settings: train it
        if bundle_dir.exists():
            console.print(f"retraining: {e}")
        bundle, res = make_bundle(
            col,
            tcfg,
            SteerSettings(steps=cfg.steps, mode=cfg.mode),
            harm_gate=cfg.harm_gate,
            gate_recall=cfg.gate_recall,
            gate_width=cfg.gate_width,
            route=cfg.route,
            gate_col=gate_col,
            gate_pool=cfg.gate_pool,
            gate_layers=cfg.gate_layers,
            lm=lm,
            gate_model=gate_lm,
        )
        bundle.save(bundle_dir)
        plot_auroc(res, str(bundle_dir / "auroc_by_layer.png"))
        console.print(f"layers chosen by validation AUROC: {bundle.layers}")
    if bundle.gate_reader is not None:  # checked now; the tune's and the test's loads of the bundle share it
        bundle.gate_model_for(lm, gate_lm)

    console.rule("[bold]3. tune η on val splits")
    tuned = tune(
        lm,
        bundle,
        TuneConfig(
            out=str(out / "tune"),
            val_sets=cfg.val_sets,
            etas=cfg.etas,
            positions=cfg.steer_positions,
            steps=(cfg.steps,),
            modes=(cfg.mode,),
            # None: the bundle's own threshold (cfg.gate_recall), which a route recall equal to it keeps two-way
            gate_recall=cfg.gate_recalls or (None,),
            route_recall=cfg.route_recalls,
            margin=cfg.margin,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        ),
        bundle_path=bundle_dir,
    )
    key = objective_key(TuneConfig.objective)  # what the tune ranks by (mean over the benign val sources)
    console.print(f"  base model: benign compliance {tuned.base[key]:.1%} (mean over sources)")
    for r in tuned.rows:
        console.print(
            f"  {r['name']}: benign compliance {r[key]:.1%}, worst harmful drop "
            f"{r['max_harmful_refusal_drop']:+.1%} ({'keeps safety' if r['feasible'] else 'loses safety'})"
        )
    if tuned.chosen is None:
        console.print(
            f"[bold red]no η keeps harmful refusal within {cfg.margin:.0%} of the base model on every val "
            "source; showing the smallest η on test, for information only"
        )
        bundle.steering = replace(bundle.steering, eta=min(cfg.etas), positions=cfg.steer_positions[0])
        bundle.save(bundle_dir)

    console.rule(f"[bold]4. held-out test prompts: base vs steered (η = {bundle.steering.eta})")
    result = run_eval(
        EvalConfig(
            model=cfg.model,
            bundle=str(bundle_dir),
            out=str(out / "eval"),
            refusal_sets=cfg.test_sets,
            robustness_sets=(),
            capability=(),
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        ),
        lm,
        command="eds run",
    )
    from .report import terminal_table

    console.print(terminal_table(result))
    _show_examples(out / "eval" / "records")
    run_result = RunResult(
        cfg,
        None if tuned.chosen is None else asdict(tuned.chosen),
        tuned.rows,
        result,
        time.perf_counter() - t0,
    )
    write_text_atomic(
        out / "report.json",
        json.dumps(
            {
                "config": asdict(cfg),
                "chosen": run_result.chosen,
                "tuning": tuned.rows,
                "evaluation": str(out / "eval" / "result.json"),
                "seconds": round(run_result.seconds, 1),
            },
            indent=1,
        ),
    )
    console.print(
        f"done in {run_result.seconds / 60:.1f} min; report: {out / 'eval' / 'report.md'}, {out / 'report.json'}"
    )
    return run_result


def _show_examples(records: Path, n: int = 3) -> None:
    base = [json.loads(x) for x in (records / "refusal-base.jsonl").read_text().splitlines() if x.strip()]
    steered = {
        json.loads(x)["key"]: json.loads(x)
        for x in (records / "refusal-steered.jsonl").read_text().splitlines()
        if x.strip()
    }
    pairs = [
        (b, steered[b["key"]]) for b in base if b["key"] in steered and b["refused"] != steered[b["key"]]["refused"]
    ]
    for b, s in pairs[:n]:
        console.print(f"[bold]{b['group']}[/] ({b['label']}): {b['prompt'][:150]}")
        console.print(f"  [dim]base:[/]    {b['response'][:200]!r}")
        console.print(f"  [green]steered:[/] {s['response'][:200]!r}")
