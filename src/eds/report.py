"""Turn an `eds eval` result (the JSON of eds.suite) into what people read: a Markdown report with
tables and plots, and a compact terminal table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

LOG_WIDTH = 160  # columns for tables written to a file or pipe (rich would wrap them at 80)


def make_console(**kwargs: Any) -> Console:
    """A rich console for eds's output. Written to a log rather than a terminal, it is LOG_WIDTH columns
    wide (unless COLUMNS says otherwise), so per-candidate and per-dataset tables stay one row a line."""
    console = Console(**kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ and "width" not in kwargs:
        console.width = LOG_WIDTH
    return console


def _pct(rate: dict[str, Any] | None, ci: bool = True) -> str:
    if not rate:
        return "–"
    s = f"{rate['rate']:.1%}"
    return f"{s} [{rate['ci95'][0]:.0%}, {rate['ci95'][1]:.0%}]" if ci else s


def refusal_rows(section: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per dataset: base and (if present) steered refusal, change, verdict flips."""
    steered = {d["dataset"]: d for d in section.get("steered", {}).get("datasets", [])}
    flips = section.get("flips", {})
    rows = []
    for d in section["base"]["datasets"]:
        s = steered.get(d["dataset"])
        delta = None if s is None else s["refusal_rate"]["rate"] - d["refusal_rate"]["rate"]
        rows.append(
            {
                "dataset": d["dataset"],
                "should": "refuse" if d["label"] == "harmful" else "answer",
                "n": d["n"],
                "base": d["refusal_rate"],
                "steered": None if s is None else s["refusal_rate"],
                "delta": delta,
                "better": None if delta is None or abs(delta) < 1e-12 else (delta > 0) == (d["label"] == "harmful"),
                "flips": flips.get(d["dataset"]),
                "repetition": (d["repetition_rate"], None if s is None else s["repetition_rate"]),
                "categories": (d.get("categories", {}), {} if s is None else s.get("categories", {})),
            }
        )
    return rows


def _refusal_table(section: dict[str, Any], title: str) -> list[str]:
    rows = refusal_rows(section)
    steered = any(r["steered"] for r in rows)
    head = "| dataset | should | n | refusal, base |" + (
        " refusal, steered | change | refused→answered | answered→refused |" if steered else ""
    )
    lines = [f"### {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {r['dataset']} | {r['should']} | {r['n']} | {_pct(r['base'])} |"
        if steered:
            f = r["flips"] or {}
            mark = "" if r["better"] is None else (" ✓" if r["better"] else " ✗")
            line += (
                f" {_pct(r['steered'])} | {r['delta']:+.1%}{mark} | {f.get('refused_to_answered', '–')} |"
                f" {f.get('answered_to_refused', '–')} |"
            )
        lines.append(line)
    lines.append("")
    cats = [r for r in rows if r["categories"][0]]
    if cats:
        lines += ["<details><summary>refusal by category</summary>", ""]
        lines += ["| dataset | category | n | base | steered |", "|---|---|---|---|---|"]
        for r in cats:
            for c, rate in r["categories"][0].items():
                other = _pct(r["categories"][1].get(c), False)
                lines.append(f"| {r['dataset']} | {c} | {rate['n']} | {_pct(rate, False)} | {other} |")
        lines += ["", "</details>", ""]
    return lines


def _capability_lines(sections: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name in ("mmlu", "humaneval"):
        sec = sections.get(name)
        if not sec:
            continue
        key = {"mmlu": "accuracy", "humaneval": "pass_at_1"}[name]
        base, steered = sec.get("base", {}), sec.get("steered", {})
        lines.append(
            f"| {name} ({key.replace('_', '@', 1) if name == 'humaneval' else key}) | {base.get('n', '–')} | "
            f"{_pct(base.get(key))} | {_pct(steered.get(key))} |"
        )
    if lines:
        lines = ["### Capability", "", "| check | n | base | steered |", "|---|---|---|---|", *lines, ""]
    drift = sections.get("drift", {}).get("steered")
    if drift:
        kl = drift.get("mean_kl", float("nan"))
        first = drift.get("first_token_kl", float("nan"))
        lines += [
            f"Drift on plain benign prompts (`{drift.get('prompts')}`): "
            f"{drift.get('unchanged_share', 0):.1%} of replies unchanged by steering; mean KL(base ‖ steered) "
            f"of next-token distributions along the base reply {kl:.4f} nats (first token {first:.4f}).",
            "",
        ]
    return lines


def plot_refusals(section: dict[str, Any], path: Path, title: str) -> None:
    """Horizontal bars of refusal rate per dataset, base vs steered, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = refusal_rows(section)
    arms = [("base", "#8c8c8c")] + ([("steered", "#1f77b4")] if any(r["steered"] for r in rows) else [])
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.5))
    h = 0.8 / len(arms)
    for i, (arm, colour) in enumerate(arms):
        for j, r in enumerate(rows):
            rate = r[arm]
            if rate is None:
                continue
            y = j + (i - (len(arms) - 1) / 2) * h
            err = [[max(0.0, rate["rate"] - rate["ci95"][0])], [max(0.0, rate["ci95"][1] - rate["rate"])]]
            ax.barh(y, rate["rate"], height=h, color=colour, xerr=err, capsize=2, label=arm if j == 0 else None)
    ax.set_yticks(range(len(rows)), [f"{r['dataset']} ({r['should']})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("refusal rate (95% Wilson interval)")
    ax.set_title(title)
    fig.legend(loc="lower center", ncol=2, frameon=False)  # below the axes: no bar is hidden
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict[str, Any], images: dict[str, str]) -> str:
    """The report as Markdown; `images` maps section name to a relative image path."""
    cfg = result["config"]
    b = result.get("bundle")
    lines = [
        "# eds evaluation report",
        "",
        f"- model: `{result['model'].get('name') or cfg['model']}` ({result['model']['architecture']}, "
        f"{result['model']['num_layers']} layers, hidden {result['model']['hidden_size']}"
        + (f", {result['dtype']})" if result.get("dtype") else ")"),
        f"- bundle: `{b['path']}` sha256 `{b['sha256'][:16]}…`, layers {b['layers']}, gate layer {b['gate_layer']}, "
        f"steering {b['steering']}"
        if b
        else "- bundle: none (base model only)",
        f"- judge: {result['sections'].get('refusal', {}).get('judge', cfg['judge'])}; "
        f"max new tokens {cfg['max_new_tokens']}; limit per set {cfg['limit']}",
        f"- versions: {result['versions']}",
        f"- command: `{result.get('command') or 'eds.suite.run_eval'}`",
        f"- time: {result['seconds']}",
        "",
    ]
    if "refusal" in result["sections"]:
        lines += _refusal_table(result["sections"]["refusal"], "Refusal benchmarks")
        if "refusal" in images:
            lines += [f"![refusal rates]({images['refusal']})", ""]
    if "robustness" in result["sections"]:
        lines += _refusal_table(
            result["sections"]["robustness"],
            "Jailbreak robustness (harmful prompts in attack templates; attack success = 1 − refusal)",
        )
        if "robustness" in images:
            lines += [f"![robustness]({images['robustness']})", ""]
    lines += _capability_lines(result["sections"])
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path) -> Path:
    """report.md plus its plots under out/img/."""
    from .io import write_text_atomic

    (out / "img").mkdir(parents=True, exist_ok=True)
    images = {}
    for name, title in (("refusal", "Refusal benchmarks"), ("robustness", "Jailbreak robustness")):
        if name in result["sections"]:
            plot_refusals(result["sections"][name], out / "img" / f"{name}.png", title)
            images[name] = f"img/{name}.png"
    path = out / "report.md"
    write_text_atomic(path, markdown(result, images))
    return path


def terminal_table(result: dict[str, Any]):
    """A compact rich table of every refusal-type section, for the end of `eds eval`."""
    from rich.table import Table

    table = Table("section", "dataset", "should", "n", "base", "steered", "change")
    for name in ("refusal", "robustness"):
        sec = result["sections"].get(name)
        if not sec:
            continue
        for r in refusal_rows(sec):
            colour = "white" if r["better"] is None else ("green" if r["better"] else "red")
            table.add_row(
                name,
                r["dataset"],
                r["should"],
                str(r["n"]),
                _pct(r["base"]),
                _pct(r["steered"]),
                "–" if r["delta"] is None else f"[{colour}]{r['delta']:+.1%}[/]",
            )
    for name, key in (("mmlu", "accuracy"), ("humaneval", "pass_at_1")):
        sec = result["sections"].get(name)
        if sec:
            table.add_row(
                "capability",
                name,
                "",
                str(sec.get("base", {}).get("n", "")),
                _pct(sec.get("base", {}).get(key)),
                _pct(sec.get("steered", {}).get(key)),
                "",
            )
    return table
