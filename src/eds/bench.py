"""Speed and peak memory of generation: plain vs always-on steering vs gated steering.

Speed does not depend on weights, so by default the model is a randomly initialised causal LM of a
real configuration (`--config`), built directly on the device; `--model NAME` loads a real one with
eds.load_model instead. The three modes are timed in the same process and interleaved (the order is
rotated every repeat) so that clock and thermal drift cancel. For every batch size:

* prefill = `generate(max_new_tokens=1)` (the prompt forward plus one token), wall time after a
  device synchronise;
* decode  = `generate(max_new_tokens=N, min_new_tokens=N)` minus prefill, i.e. the N-1 further
  tokens; decode tokens/s = batch * (N-1) / decode time;
* peak memory = torch.cuda.max_memory_allocated() over the full generate, reset before each.

Medians over the repeats are reported, and steered/plain ratios. `--profile` adds where the time
goes: a sync check of the hooks, the standalone cost and kernel count of one `steer_states` call,
its CUDA-graph floor, optionally a torch.compile check, and one decode forward plain vs steered.

Run it as `eds bench ...` or, from a checkout, `python benchmarks/steer_speed.py ...`, e.g.

    eds bench --config qwen2.5-1.5b --batch-sizes 1 8 32 --out-dir benchmarks/results --tag gpu-h100 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]  # the checkout, when eds runs from one (for the git stamp)
COMMAND = ["python3", "benchmarks/steer_speed.py"]  # how this run was started, for the results file

from eds.bundle import EnergyBundle, SteerSettings  # noqa: E402
from eds.cpu_linear import pack_linears, packed_count, should_pack  # noqa: E402
from eds.energy import EnergyMLP  # noqa: E402
from eds.models import Fingerprint, LoadedModel, cache_keyword, find_layers, load_dtype  # noqa: E402
from eds.probe import GATE_WIDTH, HarmProbe  # noqa: E402
from eds.steer import steer, steer_states  # noqa: E402
from eds.testing import TINY_CONFIGS, random_model  # noqa: E402

_QWEN_COMMON = dict(
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    hidden_act="silu",
    use_sliding_window=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
)

#: Public Qwen2.5 configurations (hidden size, layers, heads, kv heads, MLP width, vocab, tying).
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(TINY_CONFIGS["qwen2"], vocab_size=512, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}

MODES = ("plain", "always", "gated")
#: `--route`: also time always-on steering with the harmfulness gate and routing (flagged rows toward refusal
#: with a second set of energy models), the setting `eds tune` chose for the default model
ROUTED = "routed"
#: `--gate-config`: the routed mode with its gate read from a second model (a gate model) at prefill
ROUTED_GATE_MODEL = "routed-gate-model"


def steer_kwargs(mode: str) -> dict[str, Any]:
    if mode in (ROUTED, ROUTED_GATE_MODEL):
        return {"mode": "always", "harm_gate": True, "route": True}
    return {"mode": mode, "harm_gate": False, "route": False}


# ----------------------------------------------------------------------------- setup


def device_of(args: argparse.Namespace) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(name: str, args: argparse.Namespace, device: torch.device) -> tuple[Any, str]:
    """(causal LM on `device`, label). Random weights for --config, real ones for --model."""
    dtype = load_dtype(args.dtype, str(device))
    if name.startswith("model:"):
        from eds.models import load_model

        pack = None if args.pack_linear == "auto" else False  # None: as load_model decides, EDS_PACK_LINEAR too
        lm = load_model(name[len("model:") :], dtype=dtype, device=str(device), pack_linear=pack)
        model = lm.model
    else:
        from transformers import Qwen2Config

        cfg = Qwen2Config(**{**_QWEN_COMMON, **CONFIGS[name]})
        if args.attn:
            cfg._attn_implementation = args.attn
        try:  # initialise on the device: seconds instead of minutes for 7B on a CPU
            with torch.device(device):
                model = random_model(cfg, dtype=dtype, seed=args.seed)
        except Exception as e:  # pragma: no cover - fallback for transformers that refuse
            print(f"  (building on the device failed: {e!r}; building on CPU)", flush=True)
            model = random_model(cfg, dtype=dtype, seed=args.seed).to(device)
        if should_pack(device, dtype, None if args.pack_linear == "auto" else False):  # as load_model does
            pack_linears(model)
    gc = model.generation_config
    gc.eos_token_id = None  # random weights: never stop early; every row decodes the full length
    gc.pad_token_id = 0
    gc.bos_token_id = None
    for k in ("temperature", "top_p", "top_k"):
        setattr(gc, k, None)
    gc.do_sample = False
    return model.eval().requires_grad_(False), name


def steer_layers(num_layers: int, n: int) -> list[int]:
    """`n` consecutive layers centred at about 3/4 depth."""
    centre = round(0.75 * num_layers)
    start = max(0, min(num_layers - n, centre - n // 2))
    return list(range(start, start + n))


def build_bundle(model: Any, args: argparse.Namespace, device: torch.device) -> tuple[EnergyBundle, dict]:
    """A random bundle: default-width EnergyMLPs whose input statistics come from the model's own
    hidden states on random tokens, thresholds at the (1 - gate_fraction) quantile of their energy."""
    _, layer_list = find_layers(model)
    n_layers = len(layer_list)
    layers = steer_layers(n_layers, args.layers)
    hidden = model.get_input_embeddings().embedding_dim
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, vocab, (4, min(args.prompt_len, 128)), generator=g).to(device)
    with torch.inference_mode():
        out = model.model(input_ids=ids, output_hidden_states=True)  # hidden_states[l] = input of layer l
    torch.manual_seed(args.seed + 2)
    models, thresholds, info = {}, {}, {}
    for layer in layers:
        states = out.hidden_states[layer].reshape(-1, hidden).float()
        m = EnergyMLP(hidden).to(device)
        m.set_input_stats(states)
        m.eval().requires_grad_(False)
        with torch.inference_mode():
            e = m(states)
        thresholds[layer] = float(torch.quantile(e, 1.0 - args.gate_fraction))
        models[layer] = m if args.bundle_device == "model" else m.cpu()
        info[layer] = {"widths": list(m.widths), "threshold": thresholds[layer]}
    bundle = EnergyBundle(
        fingerprint=Fingerprint.of(model),
        models=models,
        thresholds=thresholds,
        steering=SteerSettings(eta=args.eta, steps=args.steps, mode="always", positions="all", harm_gate=False),
    )
    if args.route:  # a random gate at the first steered layer (about half the rows flagged) and refuse models
        probe, threshold = random_gate(out.hidden_states[layers[0]][:, -1], device)
        bundle.set_gate(probe, layers[0], threshold)
        bundle.refuse_models = {layer: copy.deepcopy(m) for layer, m in models.items()}
        bundle.refuse_thresholds = dict(thresholds)
    nbytes = sum(t.numel() * t.element_size() for m in models.values() for t in [*m.parameters(), *m.buffers()])
    return bundle, {"layers": layers, "num_layers": n_layers, "energy": info, "energy_bytes": nbytes}


def random_gate(states: torch.Tensor, device: torch.device) -> tuple[HarmProbe, float]:
    """A random gate on last-token `states` [N, H] (input statistics from them) and the threshold that
    flags about half of them."""
    probe = HarmProbe(states.shape[-1], GATE_WIDTH).to(device).requires_grad_(False)
    probe.mean.copy_(states.float().mean(0))
    probe.std.copy_(states.float().std(0).clamp_min(1e-3))
    return probe, float(probe(states).median())


def gate_model_bundle(bundle: EnergyBundle, args: argparse.Namespace, device: torch.device) -> EnergyBundle:
    """The routed bundle with its gate read from a second random model of `args.gate_config` (a gate
    model, run on each prompt at prefill up to `args.gate_layer`) instead of the steered model's layer."""
    from dataclasses import replace

    gate_model, _ = build_model(args.gate_config, args, device)
    fp = Fingerprint.of(gate_model, name=args.gate_config)
    if fp.vocab_size != bundle.fingerprint.vocab_size:  # it reads the steered model's token ids
        raise SystemExit(
            f"--gate-config {args.gate_config}: vocabulary of {fp.vocab_size}, the steered model's is "
            f"{bundle.fingerprint.vocab_size}; a gate model reads the steered model's token ids"
        )
    if not 0 <= args.gate_layer < fp.num_layers:
        raise SystemExit(f"--gate-layer {args.gate_layer} is not in {args.gate_config}'s 0..{fp.num_layers - 1}")
    reader, layer = LoadedModel(gate_model, None, args.gate_config, "model.layers", fp), args.gate_layer
    g = torch.Generator().manual_seed(args.seed + 3)
    ids = torch.randint(0, reader.fingerprint.vocab_size, (4, min(args.prompt_len, 128)), generator=g).to(device)
    with torch.inference_mode():
        states = gate_model.model(input_ids=ids, output_hidden_states=True).hidden_states[layer][:, -1]
    variant = replace(bundle)
    probe, threshold = random_gate(states, device)
    variant.set_gate(probe, layer, threshold, reader=reader.fingerprint)
    variant.gate_model = reader
    return variant


# ----------------------------------------------------------------------------- timing


def gen_kwargs(ids: torch.Tensor, mask: torch.Tensor, new: int) -> dict[str, Any]:
    return dict(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )


def run_once(model: Any, bundle: EnergyBundle, mode: str, kw: dict, device: torch.device) -> dict[str, Any]:
    """One generate call (steer context entered inside, as eds.generate does); wall time and peak."""
    ctx = steer(model, bundle, **steer_kwargs(mode)) if mode != "plain" else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    gc.collect()
    gc.disable()  # no collector pauses inside the timed region
    try:
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), ctx as handle:
            out = model.generate(**kw)
        sync(device)
        dt = time.perf_counter() - t0
    finally:
        gc.enable()
    res: dict[str, Any] = {"s": dt, "len": int(out.shape[1])}
    if device.type == "cuda":
        res["peak"] = torch.cuda.max_memory_allocated(device)
        res["before"] = before
    if handle is not None and handle.stats.moved is not None and handle.stats.positions:
        moved = handle.stats.moved.float().sum().item()
        res["moved_frac"] = moved / (handle.stats.positions * len(bundle.layers) * out.shape[0])
    return res


def bench_batch(
    model: Any,
    bundle: EnergyBundle,
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    variants: dict[str, EnergyBundle] | None = None,
) -> dict:
    """Every mode at one batch size, interleaved; `variants` gives modes their own bundle (default `bundle`)."""
    variants = variants or {}
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(args.seed + batch)
    ids = torch.randint(1, vocab, (batch, args.prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    kw_pre, kw_full = gen_kwargs(ids, mask, 1), gen_kwargs(ids, mask, args.new_tokens)
    modes = MODES + ((ROUTED,) if args.route else ()) + tuple(variants)
    raw: dict[str, dict[str, list]] = {m: {"prefill": [], "full": [], "peak": [], "moved": []} for m in modes}
    for rep in range(args.warmup + args.repeats):
        k = rep % len(modes)
        order = modes[k:] + modes[:k]  # rotate so no mode always runs first
        for mode in order:
            p = run_once(model, variants.get(mode, bundle), mode, kw_pre, device)
            f = run_once(model, variants.get(mode, bundle), mode, kw_full, device)
            assert f["len"] == args.prompt_len + args.new_tokens, f"{mode}: stopped early ({f['len']})"
            if rep < args.warmup:
                continue
            raw[mode]["prefill"].append(p["s"])
            raw[mode]["full"].append(f["s"])
            if "peak" in f:
                raw[mode]["peak"].append(max(p["peak"], f["peak"]))
            if "moved_frac" in f:
                raw[mode]["moved"].append(f["moved_frac"])
    # Decode is host-bound (Python dispatch + kernel launches) and the host of a VM is noisy; noise
    # only adds time, so the primary figures are best-of-N; medians and per-repeat paired ratios
    # (steered vs plain of the same repeat, a few seconds apart) are kept alongside.
    res: dict[str, Any] = {"batch": batch, "modes": {}}
    decode: dict[str, list[float]] = {}
    for mode in modes:
        r = raw[mode]
        decode[mode] = [f - p for f, p in zip(r["full"], r["prefill"], strict=True)]
        d, pre = min(decode[mode]), min(r["prefill"])
        res["modes"][mode] = {
            "prefill_ms": 1e3 * pre,
            "prefill_ms_median": 1e3 * statistics.median(r["prefill"]),
            "prefill_ms_all": [1e3 * x for x in r["prefill"]],
            "decode_ms": 1e3 * d,
            "decode_ms_median": 1e3 * statistics.median(decode[mode]),
            "decode_ms_all": [1e3 * x for x in decode[mode]],
            "decode_ms_per_token": 1e3 * d / (args.new_tokens - 1),
            "decode_tok_s": batch * (args.new_tokens - 1) / d,
            "prefill_tok_s": batch * args.prompt_len / pre,
            "peak_mib": max(r["peak"]) / 2**20 if r["peak"] else None,
            "moved_frac": statistics.mean(r["moved"]) if r["moved"] else None,
        }
    plain = res["modes"]["plain"]
    res["ratios"] = {}
    for mode in modes[1:]:
        m = res["modes"][mode]
        paired = [100 * (s_ / p_ - 1) for s_, p_ in zip(decode[mode], decode["plain"], strict=True)]
        res["ratios"][mode] = {
            "prefill_time": m["prefill_ms"] / plain["prefill_ms"],
            "prefill_time_median": m["prefill_ms_median"] / plain["prefill_ms_median"],
            "decode_tok_s": m["decode_tok_s"] / plain["decode_tok_s"],
            "decode_overhead_pct": 100 * (m["decode_ms"] / plain["decode_ms"] - 1),
            "decode_overhead_pct_median": 100 * (m["decode_ms_median"] / plain["decode_ms_median"] - 1),
            "decode_overhead_pct_paired": paired,
            "decode_overhead_pct_paired_median": statistics.median(paired),
            "decode_ms_per_token_extra": m["decode_ms_per_token"] - plain["decode_ms_per_token"],
            "peak_memory": (m["peak_mib"] / plain["peak_mib"]) if plain["peak_mib"] else None,
            "peak_memory_delta_mib": (m["peak_mib"] - plain["peak_mib"]) if plain["peak_mib"] else None,
        }
    return res


# ----------------------------------------------------------------------------- profile


def _cuda_ms(fn, n: int, device: torch.device) -> float:
    """Mean ms per call of `fn` over n calls, timed with CUDA events (host time on CPU)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e3 * (time.perf_counter() - t0) / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync(device)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    sync(device)
    return start.elapsed_time(end) / n


def _host_ms(fn, n: int) -> float:
    """Mean host ms per call (what the Python thread spends issuing the work; no sync inside)."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return 1e3 * (time.perf_counter() - t0) / n


def _kernels(fn, device: torch.device, n: int = 5) -> tuple[float, str]:
    """Device kernels (and memsets/copies) per call of fn, and the profiler's top CPU-op table."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    sync(device)
    with profile(activities=acts) as prof:
        for _ in range(n):
            fn()
        sync(device)
    kern = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40)
    return kern / n, table


def profile_section(model: Any, bundle: EnergyBundle, args: argparse.Namespace, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    layer = bundle.layers[0]
    energy = bundle.frozen(layer, device)
    hidden = model.get_input_embeddings().embedding_dim
    vocab = model.get_input_embeddings().num_embeddings
    dtype = next(model.parameters()).dtype

    # 1. host-device syncs raised inside eds's hooks during a steered generate (prefill + decode)
    if device.type == "cuda":
        ids = torch.randint(1, vocab, (2, 32), device=device)
        kw = gen_kwargs(ids, torch.ones_like(ids), 4)
        found: dict[str, int] = {}
        total = 0
        for mode in ("always", "gated"):
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with torch.inference_mode(), steer(model, bundle, mode=mode):
                        model.generate(**kw)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            for w in rec:
                if "synchroniz" not in str(w.message):
                    continue
                total += 1
                if f"{os.sep}eds{os.sep}" in w.filename:
                    key = f"{mode}: {Path(w.filename).name}:{w.lineno}"
                    found[key] = found.get(key, 0) + 1
        out["sync_check"] = {
            "syncs_in_eds_code": found,
            "syncs_total_in_generate_incl_transformers": total,
            "note": "torch.cuda.set_sync_debug_mode('warn') during steered generate(4 tokens); "
            "warnings attributed to eds/ files are syncs inside the hooks",
        }

    # 2. one steer_states call (the hook's core) on [B, H], eager, graph-captured, compiled
    per_batch = {}
    for b in args.profile_batches:
        h = (torch.randn(b, hidden, device=device) * 20).to(dtype)
        thr = bundle.thresholds[layer]
        r: dict[str, Any] = {}
        for steps in (1, args.steps):

            def call(steps=steps, h=h):
                return steer_states(h, energy, eta=args.eta, steps=steps)

            for _ in range(3):
                call()
            r[f"steps{steps}"] = {
                "device_ms_per_call": _cuda_ms(call, 50, device),
                "host_ms_per_call": _host_ms(call, 50),
            }
            k, table = _kernels(call, device)
            r[f"steps{steps}"]["kernels_per_call"] = k
            if steps == args.steps:
                r["top_ops_table"] = table
        r["kernels_per_step"] = (r[f"steps{args.steps}"]["kernels_per_call"] - r["steps1"]["kernels_per_call"]) / max(
            1, args.steps - 1
        )
        r["kernels_outside_steps"] = r["steps1"]["kernels_per_call"] - r["kernels_per_step"]

        def gated(h=h, thr=thr):
            return steer_states(h, energy, eta=args.eta, steps=args.steps, threshold=thr)

        gated()
        r["gated_host_ms_per_call"] = _host_ms(gated, 50)

        if device.type == "cuda":  # GPU floor: the same call with all launches replayed from a graph
            try:
                static_h = h.clone()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s), torch.inference_mode():
                    for _ in range(3):
                        steer_states(static_h, energy, eta=args.eta, steps=args.steps)
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph):
                    steer_states(static_h, energy, eta=args.eta, steps=args.steps)
                graph.replay()
                r["cuda_graph_device_ms_per_call"] = _cuda_ms(graph.replay, 100, device)
                r["cuda_graph_capturable"] = True
            except Exception as e:
                r["cuda_graph_capturable"] = False
                r["cuda_graph_error"] = repr(e)[:500]
            torch.cuda.synchronize()

        if args.compile_check:
            try:
                torch._dynamo.reset()
                fn = torch.compile(
                    lambda x: steer_states(x, energy, eta=args.eta, steps=args.steps), fullgraph=True, dynamic=False
                )
                t0 = time.perf_counter()
                with torch.inference_mode():
                    fn(h)
                sync(device)
                r["compile"] = {"fullgraph": True, "compile_s": time.perf_counter() - t0}

                def comp(fn=fn, h=h):
                    with torch.inference_mode():
                        return fn(h)

                for _ in range(3):
                    comp()
                r["compile"]["device_ms_per_call"] = _cuda_ms(comp, 50, device)
                r["compile"]["host_ms_per_call"] = _host_ms(comp, 50)
                r["compile"]["kernels_per_call"] = _kernels(comp, device)[0]
                with torch.inference_mode():
                    ref = steer_states(h, energy, eta=args.eta, steps=args.steps)[0].float()
                    got = fn(h)[0].float()
                r["compile"]["max_rel_diff_vs_eager"] = float((got - ref).norm() / ref.norm())
            except Exception as e:
                r["compile"] = {"fullgraph": False, "error": repr(e)[:800]}
        per_batch[str(b)] = r
    out["steer_states"] = per_batch

    # 3. one decode forward of the whole model, plain vs steered (cache built by a prefill). The two
    # arms alternate step by step, so a drift of the host's speed hits both alike. Each step enters a
    # fresh steer(), which forgets a gate's per-sequence decision, so this times the ungated path
    # explicitly (harm_gate=False); gated and routed generation is timed by the whole-generate runs.
    from transformers import DynamicCache

    fwd: dict[str, Any] = {}
    ckw = cache_keyword(model)

    def arm(mode: str) -> Any:
        return steer(model, bundle, mode=mode, harm_gate=False) if mode != "plain" else contextlib.nullcontext()

    for b in args.profile_batches:
        ids = torch.randint(1, vocab, (b, args.prompt_len), device=device)
        state: dict[str, dict[str, Any]] = {}
        for mode in ("plain", "always"):
            with torch.inference_mode(), arm(mode):
                cache = DynamicCache()
                mask = torch.ones(b, args.prompt_len, dtype=torch.long, device=device)
                o = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **{ckw: cache})
                state[mode] = {"nxt": o.logits[:, -1:].argmax(-1), "mask": mask, "cache": cache}

        def step(st: dict[str, Any]) -> None:
            st["mask"] = torch.cat([st["mask"], st["mask"][:, :1]], dim=1)
            o = model(
                input_ids=st["nxt"], attention_mask=st["mask"], use_cache=True, logits_to_keep=1, **{ckw: st["cache"]}
            )
            st["nxt"] = o.logits[:, -1:].argmax(-1)

        times: dict[str, list[float]] = {"plain": [], "always": []}
        with torch.inference_mode():
            for i in range(23):
                for mode in ("plain", "always"):
                    with arm(mode):
                        sync(device)
                        t0 = time.perf_counter()
                        step(state[mode])
                        sync(device)
                        if i >= 3:  # warm-up
                            times[mode].append(1e3 * (time.perf_counter() - t0))
        row: dict[str, Any] = {}
        for mode in ("plain", "always"):
            with torch.inference_mode(), arm(mode):
                host = _host_ms(lambda st=state[mode]: step(st), 10)
                kern, table = _kernels(lambda st=state[mode]: step(st), device, n=3)
            row[mode] = {
                "ms_per_step": statistics.median(times[mode]),
                "host_ms_per_step_no_sync": host,
                "kernels_per_step": kern,
            }
            if mode == "always":
                row["top_ops_table_steered"] = table
        row["extra_ms"] = row["always"]["ms_per_step"] - row["plain"]["ms_per_step"]
        row["extra_kernels"] = row["always"]["kernels_per_step"] - row["plain"]["kernels_per_step"]
        row["overhead_pct"] = 100 * row["extra_ms"] / row["plain"]["ms_per_step"]
        row["paired_overhead_pct"] = 100 * (
            statistics.median(a / p for a, p in zip(times["always"], times["plain"], strict=True)) - 1
        )
        fwd[str(b)] = row
    out["decode_forward"] = fwd

    # 4. entering steer() with the bundle on the CPU (what eds.generate does per batch: a deep copy)
    cpu_bundle = EnergyBundle(
        fingerprint=bundle.fingerprint,
        models={k: copy.deepcopy(m).cpu() for k, m in bundle.models.items()},
        thresholds=bundle.thresholds,
        steering=bundle.steering,
    )
    ts = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        with steer(model, cpu_bundle):
            pass
        sync(device)
        ts.append(1e3 * (time.perf_counter() - t0))
    out["steer_enter_exit_ms_cpu_bundle"] = statistics.median(ts)
    ts = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        with steer(model, bundle):
            pass
        sync(device)
        ts.append(1e3 * (time.perf_counter() - t0))
    out["steer_enter_exit_ms_device_bundle"] = statistics.median(ts)
    return out


def patch_steer_states_compiled() -> None:
    """Replace the `steer_states` that eds's layer hooks call (looked up in eds.steer at call time)
    with a torch.compile'd one. Benchmark-only: shows the gain of fusing the steering path."""
    mod = sys.modules["eds.steer"]
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    compiled = torch.compile(steer_states, dynamic=False)

    def patched(h, energy, **kwargs):
        return compiled(h, energy, **kwargs)

    mod.steer_states = patched


# ----------------------------------------------------------------------------- report


def meta(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import transformers

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    m = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            shlex.quote(a) for a in [*COMMAND, *(args.argv if args.argv is not None else sys.argv[1:])]
        ),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "git_commit": commit if re.fullmatch(r"[0-9a-f]{40}", commit := git("rev-parse", "HEAD")) else "unknown",
        "git_src_dirty": bool(git("status", "--porcelain", "--", "src")),
        "settings": {
            k: getattr(args, k)
            for k in (
                "dtype",
                "pack_linear",
                "prompt_len",
                "new_tokens",
                "repeats",
                "warmup",
                "layers",
                "steps",
                "eta",
                "gate_fraction",
                "bundle_device",
                "attn",
                "seed",
                "steer_impl",
            )
        },
    }
    return m


def markdown(doc: dict[str, Any]) -> str:
    mt = doc["meta"]
    lines = [
        f"# steer_speed: {doc['model']}",
        "",
        f"- machine: {mt['gpu'] or mt['cpu']} ({mt['device']}, {mt['cpu_count']} CPU threads)",
        f"- versions: torch {mt['torch']} (CUDA {mt['cuda']}), transformers {mt['transformers']}, "
        f"python {mt['python']}; eds at {mt['git_commit'][:10]}"
        + (" + uncommitted src changes" if mt["git_src_dirty"] else ""),
        f"- date: {mt['date']}",
        f"- command: `{mt['command']}`",
        f"- model: {doc['model']} ({doc['attn_implementation']} attention, {mt['settings']['dtype']}"
        + (f", {doc['packed_linears']} linear layers oneDNN-packed" if doc.get("packed_linears") else "")
        + "), "
        f"steered layers {doc['bundle']['layers']} of {doc['bundle']['num_layers']}, "
        f"steps {mt['settings']['steps']}, eta {mt['settings']['eta']}, "
        f"energy widths {next(iter(doc['bundle']['energy'].values()))['widths']}, "
        f"energy models {doc['bundle']['energy_bytes'] / 2**20:.1f} MiB on the device",
        *(
            [
                f"- {ROUTED_GATE_MODEL}: routed, its gate read from a random {g['config']} (a gate model) run on "
                f"the prompt up to its layer {g['layer']}; routed: the gate at the first steered layer"
            ]
            if (g := doc["bundle"].get("gate_model"))
            else []
        ),
        f"- prompt {mt['settings']['prompt_len']} random tokens, {mt['settings']['new_tokens']} new tokens "
        f"(greedy, min_new_tokens = max_new_tokens), {mt['settings']['repeats']} interleaved repeats "
        f"after {mt['settings']['warmup']} warm-up",
        "",
        "Times are best of the repeats (the host is the bottleneck and its noise only adds time); "
        "'paired' is the median over repeats of steered/plain decode time within the same repeat.",
        "",
        "| batch | plain prefill ms | plain decode tok/s | plain peak MiB | mode | prefill time × | decode tok/s × "
        "| decode overhead (best) | (paired median) | peak mem × (Δ MiB) | steered fraction |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        p = r["modes"]["plain"]
        for mode in r["ratios"]:
            q, m = r["ratios"][mode], r["modes"][mode]
            peak = (
                f"{q['peak_memory']:.4f} ({q['peak_memory_delta_mib']:+.1f})" if q["peak_memory"] is not None else "n/a"
            )
            frac = f"{m['moved_frac']:.2f}" if m["moved_frac"] is not None else "n/a"
            pk = f"{p['peak_mib']:.0f}" if p["peak_mib"] is not None else "n/a"
            lines.append(
                f"| {r['batch']} | {p['prefill_ms']:.1f} | {p['decode_tok_s']:.1f} | {pk} | {mode} | "
                f"{q['prefill_time']:.3f} | {q['decode_tok_s']:.3f} | {q['decode_overhead_pct']:+.1f}% "
                f"| {q['decode_overhead_pct_paired_median']:+.1f}% | {peak} | {frac} |"
            )
    prof = doc.get("profile")
    if prof:
        lines += ["", "## Profile", ""]
        if "sync_check" in prof:
            sc = prof["sync_check"]
            lines.append(
                f"- host-device syncs inside eds hooks: {sc['syncs_in_eds_code'] or 'none'} "
                "(all syncs in a 4-token steered generate, transformers' included: "
                f"{sc['syncs_total_in_generate_incl_transformers']})"
            )
        for b, r in prof["steer_states"].items():
            s = r[f"steps{mt['settings']['steps']}"]
            line = (
                f"- steer_states, batch {b}, {mt['settings']['steps']} steps: "
                f"{s['kernels_per_call']:.0f} kernels per call "
                f"({r['kernels_per_step']:.0f} per step + {r['kernels_outside_steps']:.0f} outside), "
                f"host {s['host_ms_per_call']:.3f} ms, device {s['device_ms_per_call']:.3f} ms per call (eager)"
            )
            if r.get("cuda_graph_capturable"):
                line += f"; CUDA-graph replay {r['cuda_graph_device_ms_per_call']:.3f} ms"
            elif "cuda_graph_capturable" in r:
                line += f"; NOT graph-capturable: {r.get('cuda_graph_error')}"
            c = r.get("compile")
            if c and c.get("fullgraph"):
                line += (
                    f"; torch.compile(fullgraph) ok in {c['compile_s']:.0f} s: {c['kernels_per_call']:.0f} kernels, "
                    f"host {c['host_ms_per_call']:.3f} ms, device {c['device_ms_per_call']:.3f} ms"
                )
            elif c:
                line += f"; torch.compile(fullgraph) failed: {c.get('error')}"
            lines.append(line)
        nan = float("nan")
        for b, r in prof["decode_forward"].items():
            lines.append(
                f"- one decode forward, batch {b}: plain {r['plain']['ms_per_step']:.2f} ms "
                f"({r['plain']['kernels_per_step']:.0f} kernels), steered {r['always']['ms_per_step']:.2f} ms "
                f"({r['always']['kernels_per_step']:.0f} kernels): {r['extra_ms']:+.2f} ms "
                f"({r['overhead_pct']:+.1f}%; paired, step by step: {r.get('paired_overhead_pct', nan):+.1f}%), "
                f"+{r['extra_kernels']:.0f} kernels (medians of 20 alternating steps)"
            )
        lines.append(
            "- entering+leaving steer(): "
            f"{prof['steer_enter_exit_ms_device_bundle']:.2f} ms with the bundle on the device, "
            f"{prof['steer_enter_exit_ms_cpu_bundle']:.2f} ms with it on the CPU (deep copy to the device each time)"
        )
    return "\n".join(lines) + "\n"


def print_table(doc: dict[str, Any]) -> None:
    prof = doc.get("profile")
    if prof:  # long op tables first, so the summary ends the output
        for b, r in prof["steer_states"].items():
            print(f"-- top ops of steer_states, batch {b}:\n{r['top_ops_table']}")
        for b, r in prof["decode_forward"].items():
            print(f"-- top ops of one steered decode forward, batch {b}:\n{r['top_ops_table_steered']}")
    print(
        f"\n== {doc['model']} on {doc['meta']['gpu'] or doc['meta']['cpu']} "
        f"(best of {doc['meta']['settings']['repeats']})"
    )
    print(
        f"{'batch':>5} {'mode':>6} {'prefill ms':>11} {'decode tok/s':>13} {'peak MiB':>10} "
        f"{'prefill x':>9} {'tok/s x':>8} {'overhead':>9} {'paired':>8} {'peak x':>8} {'frac':>5}"
    )
    for r in doc["results"]:
        for mode in r["modes"]:
            m = r["modes"][mode]
            q = r["ratios"].get(mode)
            peak = f"{m['peak_mib']:.0f}" if m["peak_mib"] is not None else "-"
            ratio = (
                f"{q['prefill_time']:>9.3f} {q['decode_tok_s']:>8.3f} {q['decode_overhead_pct']:>+8.1f}% "
                f"{q['decode_overhead_pct_paired_median']:>+7.1f}% "
                f"{(q['peak_memory'] or float('nan')):>8.4f} {(m['moved_frac'] or 0):>5.2f}"
                if q
                else ""
            )
            print(f"{r['batch']:>5} {mode:>6} {m['prefill_ms']:>11.1f} {m['decode_tok_s']:>13.1f} {peak:>10} {ratio}")
    if prof:
        print(markdown(doc).split("## Profile", 1)[1])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", nargs="+", choices=sorted(CONFIGS), help="random-weight model(s) of these configs")
    src.add_argument("--model", nargs="+", help="real model(s) via eds.load_model (e.g. qwen2.5-coder-0.5b-instruct)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--layers", type=int, default=3, help="number of steered layers (consecutive, ~3/4 depth)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--eta", type=float, default=0.05)
    ap.add_argument("--gate-fraction", type=float, default=0.5, help="share of states above the gated threshold")
    ap.add_argument(
        "--route",
        action="store_true",
        help="also time 'routed': always-on steering with a harm gate and refuse models (two energy models a layer)",
    )
    ap.add_argument(
        "--gate-config",
        choices=sorted(CONFIGS),
        help="with --route: also time routed steering whose gate reads a second random model of this config "
        "(a gate model, run on each prompt at prefill up to --gate-layer), e.g. qwen2.5-1.5b beside a 0.5B",
    )
    ap.add_argument("--gate-layer", type=int, default=12, help="the gate model's layer (with --gate-config)")
    ap.add_argument(
        "--bundle-device",
        choices=["model", "cpu"],
        default="model",
        help="where the bundle's energy models live before steer() (cpu: copied on every steer entry)",
    )
    ap.add_argument(
        "--dtype",
        choices=["default", "bfloat16", "float16", "float32"],
        default="default",
        help="default: bf16 where the device computes it natively, else float32 (as load_model)",
    )
    ap.add_argument(
        "--pack-linear",
        choices=["auto", "off"],
        default="auto",
        help="auto: float32 on CPU runs linear layers on oneDNN-packed weights, as load_model does",
    )
    ap.add_argument("--attn", default=None, help="attention implementation (default: transformers' choice)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--steer-impl",
        choices=["eager", "compile"],
        default="eager",
        help="what-if: 'compile' swaps eds.steer.steer_states for torch.compile(steer_states) inside the hooks "
        "(a benchmark-only patch, to measure what fusing the steps would buy; eds itself is unchanged)",
    )
    ap.add_argument("--profile", action="store_true", help="add where the time goes (sync check, kernels, decode step)")
    ap.add_argument("--profile-batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument(
        "--profile-only",
        action="store_true",
        help="--profile without the whole-generate timings (a few-token generate timed once is host noise)",
    )
    ap.add_argument(
        "--compile-check", action="store_true", help="with --profile: torch.compile(fullgraph) steer_states"
    )
    ap.add_argument("--out-dir", type=Path, default=None, help="write <tag>-<model>.json and .md here")
    ap.add_argument("--tag", default=None, help="file name prefix (default: gpu name or 'cpu')")
    args = ap.parse_args(argv)
    args.argv = argv
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2 (decode = all tokens after the first)")
    if args.gate_config and not args.route:
        ap.error("--gate-config times the routed mode's gate: add --route")

    args.profile = args.profile or args.profile_only
    device = device_of(args)
    args.dtype = str(load_dtype(args.dtype, str(device))).removeprefix("torch.")  # what ran, in the results
    if args.steer_impl == "compile":
        patch_steer_states_compiled()
    names = args.config or [f"model:{m}" for m in args.model or []] or ["qwen2.5-1.5b"]
    info = meta(args, device)
    tag = args.tag or ("gpu-" + info["gpu"].lower().replace("nvidia", "").strip().split()[0] if info["gpu"] else "cpu")
    for name in names:
        t0 = time.perf_counter()
        model, label = build_model(name, args, device)
        print(f"built {label} in {time.perf_counter() - t0:.1f} s", flush=True)
        bundle, binfo = build_bundle(model, args, device)
        variants = {}
        if args.gate_config:
            variants[ROUTED_GATE_MODEL] = gate_model_bundle(bundle, args, device)
            binfo["gate_model"] = {"config": args.gate_config, "layer": variants[ROUTED_GATE_MODEL].gate_layer}
        doc: dict[str, Any] = {
            "model": label.removeprefix("model:"),
            "random_weights": not label.startswith("model:"),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "params": sum(p.numel() for p in model.parameters()),
            "packed_linears": packed_count(model),
            "bundle": binfo,
            "meta": info,
            "results": [],
        }
        for b in [] if args.profile_only else args.batch_sizes:
            t1 = time.perf_counter()
            doc["results"].append(bench_batch(model, bundle, b, args, device, variants))
            r = doc["results"][-1]["ratios"]
            print(
                f"  batch {b}: decode overhead always {r['always']['decode_overhead_pct']:+.1f}% "
                f"(paired {r['always']['decode_overhead_pct_paired_median']:+.1f}%), "
                f"gated {r['gated']['decode_overhead_pct']:+.1f}% ({time.perf_counter() - t1:.0f} s)",
                flush=True,
            )
        if args.profile:
            t1 = time.perf_counter()
            doc["profile"] = profile_section(model, bundle, args, device)
            print(f"  profile: {time.perf_counter() - t1:.0f} s", flush=True)
        print_table(doc)
        if args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{tag}-{doc['model']}"
            (args.out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
            (args.out_dir / f"{stem}.md").write_text(markdown(doc))
            print(f"wrote {args.out_dir / stem}.json/.md", flush=True)
        del model, bundle
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
