import json
import warnings

import pytest
import torch

from eds.bundle import BundleError, EnergyBundle, SteerSettings
from eds.energy import EnergyMLP
from eds.models import cache_keyword
from eds.steer import steer, steer_states
from eds.testing import random_bundle, tiny_model


def layer_inputs(lm, enc):
    """States entering every layer, as the layer sees them (captured after any steering hook)."""
    seen = {}

    def grab(i):
        def hook(module, args, kwargs):
            seen[i] = (args[0] if args else kwargs["hidden_states"]).clone()

        return hook

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(lm.layers)]
    try:
        with torch.no_grad():
            logits = lm.model(**enc).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def test_a_step_lowers_the_energy():
    torch.manual_seed(0)
    m = EnergyMLP(32, (16, 8))
    h = torch.randn(50, 32)
    new, moved = steer_states(h, m, eta=0.01, steps=1)
    assert moved.all() and (m(new) < m(h)).float().mean() > 0.95
    new3, _ = steer_states(h, m, eta=0.01, steps=3)
    assert (m(new3) < m(new)).float().mean() > 0.9
    assert torch.allclose((new - h).norm(dim=-1), 0.01 * h.norm(dim=-1), rtol=1e-4)  # step length eta*|h|


def midway(energies: torch.Tensor) -> float:
    """A threshold halfway between the two middle energies. Not `median()`: that is one row's own energy,
    and whether that row is above it then turns on the last bit of float rounding, which two ways of
    computing the energy do differently (a test failed so on an AVX-512 CPU)."""
    e, k = energies.float().sort().values, len(energies) // 2
    return float((e[k - 1] + e[k]) / 2)


def test_gated_mode_leaves_low_energy_states_exactly_unchanged():
    torch.manual_seed(0)
    m = EnergyMLP(32, (16, 8)).requires_grad_(False)
    h = torch.randn(40, 32).bfloat16()
    e = m(h)
    threshold = midway(e)
    new, moved = steer_states(h, m, eta=0.05, steps=3, threshold=threshold)
    low = e <= threshold
    assert torch.equal(new[low], h[low]) and not moved[low].any()
    assert moved[~low].all() and not torch.equal(new[~low], h[~low])
    assert new.dtype == torch.bfloat16


def test_gated_entry_moves_high_states_all_the_way_and_leaves_low_ones():
    """gated-entry: the entry energy decides; a state above the threshold takes every step (the same
    states as always-on), even after its energy has fallen below the threshold, where gated stops."""
    torch.manual_seed(0)
    m = EnergyMLP(32, (16, 8)).requires_grad_(False)
    h = torch.randn(40, 32)
    e = m(h)
    threshold = midway(e)
    low = e <= threshold
    entry, moved = steer_states(h, m, eta=0.3, steps=4, threshold=threshold, latch=True)
    always, _ = steer_states(h, m, eta=0.3, steps=4)
    gated, _ = steer_states(h, m, eta=0.3, steps=4, threshold=threshold)
    assert torch.equal(entry[low], h[low]) and torch.equal(moved, ~low)
    torch.testing.assert_close(entry[~low], always[~low])
    # with steps this long, some states cross the threshold early: gated stops them, gated-entry does not
    stopped = (gated[~low] - entry[~low]).norm(dim=-1) > 1e-3
    assert stopped.any() and (m(gated[~low])[stopped] > m(entry[~low])[stopped]).all()


def test_gated_entry_mode_is_a_steering_setting(tiny):
    bundle = random_bundle(tiny, layers=(1,), threshold=-1e9, mode="gated-entry")
    enc = tiny.encode(["How do I kill a Python process?", "hi"])
    base, _ = layer_inputs(tiny, enc)
    with steer(tiny, bundle) as handle:
        moved, _ = layer_inputs(tiny, enc)
    assert handle.settings.mode == "gated-entry" and handle.stats.moved.tolist() == [1, 1]
    assert not torch.equal(base[1][:, -1], moved[1][:, -1])
    with pytest.raises(BundleError, match="mode must be one of"), steer(tiny, bundle, mode="gate"):
        pass


def test_zero_steps_is_bit_identical(tiny):
    enc = tiny.encode(["How do I kill a Python process?", "hi"])
    plain = tiny.model.generate(**enc, max_new_tokens=8, do_sample=False)
    with steer(tiny, random_bundle(tiny, layers=(0, 2)), steps=0):
        steered = tiny.model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(plain, steered)


def test_only_chosen_layers_and_positions_move(tiny):
    enc = tiny.encode(["How do I kill a Python process?", "Where can I buy a can of coke?"])
    base, base_logits = layer_inputs(tiny, enc)
    with steer(tiny, random_bundle(tiny, layers=(1,)), eta=0.2, steps=2):
        moved, logits = layer_inputs(tiny, enc)
    assert torch.equal(base[0], moved[0])  # before the steered layer: untouched
    assert torch.equal(base[1][:, :-1], moved[1][:, :-1])  # steered layer: only the last prompt token
    assert not torch.allclose(base[1][:, -1], moved[1][:, -1])
    assert not torch.allclose(base_logits[:, -1], logits[:, -1])
    after, after_logits = layer_inputs(tiny, enc)
    assert torch.equal(after_logits, base_logits) and torch.equal(after[1], base[1])  # restored on exit


def test_hooks_are_removed_after_an_exception(tiny):
    def count():
        return len(tiny.model._forward_pre_hooks) + sum(len(layer._forward_pre_hooks) for layer in tiny.layers)

    before = count()
    with pytest.raises(RuntimeError, match="boom"), steer(tiny, random_bundle(tiny, layers=(0, 1))):
        assert count() > before
        raise RuntimeError("boom")
    assert count() == before


def test_nested_and_repeated_use(tiny):
    enc = tiny.encode(["hi there"])
    b1, b2 = random_bundle(tiny, layers=(0,)), random_bundle(tiny, layers=(2,))
    _, base = layer_inputs(tiny, enc)
    with steer(tiny, b1, eta=0.1):
        _, one = layer_inputs(tiny, enc)
        with steer(tiny, b2, eta=0.1):
            _, both = layer_inputs(tiny, enc)
        _, one_again = layer_inputs(tiny, enc)
    assert torch.equal(one, one_again) and not torch.allclose(one, both) and not torch.allclose(base, one)
    with steer(tiny, b1, eta=0.1):
        _, repeat = layer_inputs(tiny, enc)
    assert torch.equal(repeat, one)


def test_positions_setting_limits_decode_steps(tiny):
    enc = tiny.encode(["How do I kill a Python process?", "hi"])
    runs = {}
    for positions in ("prompt", 2, "all"):
        with steer(tiny, random_bundle(tiny, layers=(1,)), eta=0.3, positions=positions) as handle:
            out = tiny.model.generate(**enc, max_new_tokens=6, do_sample=False)
        runs[positions] = out
        # one prefill + 5 decode steps for 6 new tokens
        assert handle.stats.positions == {"prompt": 1, 2: 3, "all": 6}[positions]
        assert handle.stats.moved.tolist() == [handle.stats.positions] * 2
    plain = tiny.model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert not torch.equal(runs["prompt"], plain)


def test_batched_equals_one_by_one(tiny):
    prompts = ["How do I kill a Python process?", "hi", "Where can I buy a can of coke?"]
    bundle = random_bundle(tiny, layers=(0, 2))
    with steer(tiny, bundle, eta=0.1):
        _, batched = layer_inputs(tiny, tiny.encode(prompts))
        singles = [layer_inputs(tiny, tiny.encode([p]))[1] for p in prompts]
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched[i, -1], single[0, -1], atol=1e-4, rtol=1e-4)


def test_sampling_and_bf16_work(tiny):
    lm = tiny_model("llama", dtype=torch.bfloat16)
    enc = lm.encode(["hi", "How do I kill a Python process?"])
    with steer(lm, random_bundle(lm, layers=(1,), threshold=-1e9), mode="gated") as handle:
        out = lm.model.generate(**enc, max_new_tokens=5, do_sample=True, temperature=0.8)
    assert out.shape == (2, enc["input_ids"].shape[1] + 5)
    assert handle.stats.moved.tolist() == [5, 5]  # every position was above the (very low) threshold


def test_fingerprint_and_layer_checks(tiny):
    bundle = random_bundle(tiny, layers=(1,))
    with pytest.raises(BundleError, match="does not fit"), steer(tiny_model("qwen2", layers=4), bundle):
        pass
    with pytest.raises(BundleError, match=r"layers \[2\] are not in the bundle"), steer(tiny, bundle, layers=[2]):
        pass
    with pytest.raises(BundleError, match="mode"), steer(tiny, bundle, mode="sometimes"):
        pass


def test_a_model_in_another_dtype_than_the_training_states_is_warned_of(tiny):
    bundle = random_bundle(tiny, layers=(1,))
    bundle.data_summary["model_dtypes"] = ["bfloat16"]  # trained on states read in bf16; tiny runs in float32
    with pytest.warns(UserWarning, match=r"read in bfloat16, used with the model in float32"), steer(tiny, bundle):
        pass
    bundle.data_summary["model_dtypes"] = ["float32"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with steer(tiny, bundle):
            pass
    del bundle.data_summary["model_dtypes"]  # bundles from before it was recorded: nothing to compare
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with steer(tiny, bundle):
            pass


def test_bundle_round_trip_is_exact(tmp_path, tiny):
    bundle = random_bundle(tiny, layers=(0, 2), threshold=-0.25, eta=0.07, steps=2, mode="gated", positions=5)
    bundle.save(tmp_path / "b")
    loaded = EnergyBundle.load(tmp_path / "b")
    assert loaded.layers == [0, 2] and loaded.thresholds == {0: -0.25, 2: -0.25}
    assert loaded.steering == bundle.steering and loaded.fingerprint == bundle.fingerprint
    for layer in (0, 2):
        for (k, v), (k2, v2) in zip(
            bundle.models[layer].state_dict().items(), loaded.models[layer].state_dict().items(), strict=True
        ):
            assert k == k2 and torch.equal(v, v2)
    weights = tmp_path / "b" / "energy.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="damaged"):
        EnergyBundle.load(tmp_path / "b")
    with pytest.raises(BundleError, match="not an eds bundle"):
        EnergyBundle.load(tmp_path)


def gate_for(lm, layer, block_first_of, prompts, width=0):
    """A probe whose threshold sits between the first prompt's logit and the others' (it blocks prompt 0)."""
    from eds.probe import HarmProbe

    torch.manual_seed(1)  # before building: the hidden layer's initial weights too
    probe = HarmProbe(lm.fingerprint.hidden_size, width).requires_grad_(False)
    probe.linear.weight.normal_()
    seen, _ = layer_inputs(lm, lm.encode(prompts))
    logits = probe(seen[layer][:, -1])
    assert logits[0] != logits[1:].max()
    if logits[0] < logits[1:].max():  # make prompt 0 the most harmful-looking
        probe.linear.weight.neg_()
        probe.linear.bias.neg_()
        logits = probe(seen[layer][:, -1])
    return probe, float((logits[0] + logits[1:].max()) / 2)


@pytest.mark.parametrize("width", [0, 16])  # linear gate, and one hidden layer
def test_harm_gate_keeps_blocked_rows_exactly_unsteered(tiny, tmp_path, width):
    prompts = ["Write a tutorial on how to make a bomb", "Where can I buy a can of coke?"]
    bundle = random_bundle(tiny, layers=(1, 2))
    probe, threshold = gate_for(tiny, 1, 0, prompts, width)
    bundle.set_gate(probe, 1, threshold)
    enc = tiny.encode(prompts)
    base, _ = layer_inputs(tiny, enc)
    with steer(tiny, bundle, eta=0.2) as handle:
        moved, _ = layer_inputs(tiny, enc)
    assert torch.equal(moved[2][0], base[2][0]) and torch.equal(moved[1][0], base[1][0])  # blocked row
    assert not torch.allclose(moved[2][1, -1], base[2][1, -1])  # allowed row steered
    assert handle.stats.moved.tolist() == [0, 2]
    with steer(tiny, bundle, eta=0.2, harm_gate=False) as handle:
        layer_inputs(tiny, enc)
    assert handle.stats.moved.tolist() == [2, 2]
    bundle.save(tmp_path / "g")
    loaded = EnergyBundle.load(tmp_path / "g")
    assert loaded.gate_layer == 1 and loaded.gate_threshold == threshold
    assert loaded.gate.width == width
    want = probe.state_dict()
    assert loaded.gate.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in loaded.gate.state_dict().items())
    h = torch.randn(3, tiny.fingerprint.hidden_size)
    assert torch.equal(loaded.gate(h), probe(h))
    with pytest.raises(BundleError, match="must not come after the first steered layer"):
        random_bundle(tiny, layers=(0,)).set_gate(probe, 1, threshold)


def autograd_reference(h, mlp, eta, steps, threshold=None):
    """The steering update written the slow, obvious way: autograd on the unfused MLP."""
    x = h.float().clone()
    size = eta * x.norm(dim=-1, keepdim=True)
    for _ in range(steps):
        xr = x.clone().requires_grad_(True)
        with torch.enable_grad():
            e = mlp(xr)
            (g,) = torch.autograd.grad(e.sum(), xr)
        go = torch.ones(len(x), dtype=torch.bool) if threshold is None else (e.detach() > threshold)
        x = x - go.unsqueeze(-1) * size * g / g.norm(dim=-1, keepdim=True)
    return x


@pytest.mark.parametrize("widths", [(32, 16), (64, 32, 16)])  # narrower or wider than H, and deeper
@pytest.mark.parametrize("threshold", [None, "median"])
def test_fast_path_matches_autograd(threshold, widths):
    """The steering core steps in the first layer's space (Gram matrix); autograd steps in the residual
    space, one gradient at a time: the states must agree."""
    torch.manual_seed(3)
    mlp = EnergyMLP(48, widths)
    mlp.set_input_stats(torch.randn(200, 48) * 5 + 2)
    mlp.requires_grad_(False)
    h = torch.randn(64, 48) * 5 + 2
    t = midway(mlp(h)) if threshold else None
    ours, _ = steer_states(h, mlp, eta=0.05, steps=3, threshold=t)
    ref = autograd_reference(h, mlp, 0.05, 3, t)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_static_cache_positions_without_reading_the_cache(tiny):
    enc = tiny.encode(["How do I kill a Python process?", "hi"])
    for positions, expected in (("prompt", 1), (2, 3), ("all", 6)):
        with steer(tiny, random_bundle(tiny, layers=(1,)), eta=0.3, positions=positions) as handle:
            static = tiny.model.generate(**enc, max_new_tokens=6, do_sample=False, cache_implementation="static")
        assert handle.stats.positions == expected
        with steer(tiny, random_bundle(tiny, layers=(1,)), eta=0.3, positions=positions):
            dynamic = tiny.model.generate(**enc, max_new_tokens=6, do_sample=False)
        assert torch.equal(static, dynamic)


def test_batched_equals_one_by_one_through_cached_generation(tiny):
    """The steered layer's input at the newest position, decode step by decode step, with left padding."""
    prompts = ["How do I kill a Python process?", "hi", "Where can I buy a can of coke?"]
    bundle = random_bundle(tiny, layers=(1,))

    def trace(batch):
        seen = []

        def grab(module, args, kwargs):
            seen.append((args[0] if args else kwargs["hidden_states"])[:, -1].clone())

        with steer(tiny, bundle, eta=0.1):
            handle = tiny.layers[1].register_forward_pre_hook(grab, with_kwargs=True)  # runs after steering
            try:
                out = tiny.model.generate(**tiny.encode(batch), max_new_tokens=4, do_sample=False)
            finally:
                handle.remove()
        return torch.stack(seen, 1), out[:, -4:]

    batched, tokens = trace(prompts)
    for i, p in enumerate(prompts):
        single, single_tokens = trace([p])
        assert torch.equal(tokens[i], single_tokens[0])
        torch.testing.assert_close(batched[i], single[0], atol=1e-4, rtol=1e-4)


def test_a_continued_conversation_is_a_new_prompt(tiny):
    from transformers import DynamicCache

    enc = tiny.encode(["How do I kill a Python process?"])
    more = tiny.tokenizer(["And a Java one?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with steer(tiny, random_bundle(tiny, layers=(1,)), eta=0.1, positions="prompt") as handle, torch.no_grad():
        cache = {cache_keyword(tiny.model): DynamicCache()}
        tiny.model(**enc, **cache, use_cache=True)
        mask = torch.ones(1, enc["input_ids"].shape[1] + more.shape[1], dtype=torch.long)
        tiny.model(input_ids=more, attention_mask=mask, **cache, use_cache=True)
        # the second segment is a prompt of its own: statistics restart and its last token is steered
        assert handle.stats.positions == 1 and handle.stats.moved.tolist() == [1]


def test_abandoned_chat_stream_stops_and_unhooks(tiny):
    from eds.generate import stream_chat

    def count():
        return len(tiny.model._forward_pre_hooks) + sum(len(layer._forward_pre_hooks) for layer in tiny.layers)

    before = count()
    stream = stream_chat(tiny, [{"role": "user", "content": "hi"}], bundle=random_bundle(tiny), max_new_tokens=200)
    first = next(stream)
    stream.close()  # the caller walks away after one piece
    assert isinstance(first, str) and count() == before


def test_route_steers_flagged_rows_with_the_refuse_models(tiny, tmp_path):
    from types import SimpleNamespace

    prompts = ["Write a tutorial on how to make a bomb", "Where can I buy a can of coke?"]
    bundle = random_bundle(tiny, layers=(1, 2))
    refusers = random_bundle(tiny, layers=(1, 2))
    for m in refusers.models.values():  # different weights from the answer models
        for p in m.parameters():
            p.data.mul_(-1.5)
    probe, threshold = gate_for(tiny, 1, 0, prompts)
    bundle.set_gate(probe, 1, threshold)
    results = [SimpleNamespace(layer=k, threshold=0.5) for k in (1, 2)]
    bundle.set_refuse(SimpleNamespace(models=refusers.models, results=results, table=lambda: []))
    enc = tiny.encode(prompts)
    base, _ = layer_inputs(tiny, enc)
    with steer(tiny, bundle, eta=0.2) as handle:  # route off: the flagged row is left alone
        gated, _ = layer_inputs(tiny, enc)
    assert torch.equal(gated[2][0], base[2][0]) and handle.stats.moved.tolist() == [0, 2]
    with steer(tiny, bundle, eta=0.2, route=True) as handle:
        routed, _ = layer_inputs(tiny, enc)
    assert handle.stats.moved.tolist() == [2, 2]
    # the allowed row: the answer models, as without routing (the stacked heads sum in another order)
    torch.testing.assert_close(routed[2][1], gated[2][1], atol=1e-5, rtol=1e-5)
    # the flagged row: exactly what the refuse models alone do to it
    with steer(tiny, refusers, eta=0.2):
        alone, _ = layer_inputs(tiny, tiny.encode(prompts[:1]))
    assert torch.allclose(routed[2][0, -1], alone[2][0, -1], atol=1e-5)
    assert not torch.allclose(routed[2][0, -1], base[2][0, -1])
    bundle.save(tmp_path / "r")
    loaded = EnergyBundle.load(tmp_path / "r")
    assert loaded.refuse_thresholds == {1: 0.5, 2: 0.5} and loaded.digest() == bundle.digest()
    assert all(
        torch.equal(loaded.refuse_models[1].state_dict()[k], v) for k, v in refusers.models[1].state_dict().items()
    )
    assert loaded.subset([2]).refuse_models.keys() == {2}
    with pytest.raises(BundleError, match="refuse models"), steer(tiny, _gated(tiny, probe, threshold), route=True):
        pass  # a gate but no refuse models


def _gated(lm, probe, threshold):
    b = random_bundle(lm, layers=(1,))
    b.set_gate(probe, 1, threshold)
    return b


@pytest.mark.parametrize("gated", [False, True])
def test_steer_states_compiles_as_one_graph(gated):
    """torch.compile captures the whole steering step without a graph break (what CUDA graphs and
    fusion need); backend="eager" checks the capture without paying for code generation."""
    import torch._dynamo

    from eds.energy import FrozenEnergy

    torch._dynamo.reset()
    torch.manual_seed(0)
    mlp = EnergyMLP(32, (16, 8))
    mlp.set_input_stats(torch.randn(64, 32))
    energy = FrozenEnergy(mlp.eval())
    h = torch.randn(5, 32, dtype=torch.bfloat16)
    active = torch.tensor([True, False, True, True, False])
    kw = dict(eta=0.1, steps=3, threshold=0.0 if gated else None, active=active if gated else None)
    compiled = torch.compile(steer_states, fullgraph=True, backend="eager")
    got, moved = compiled(h, energy, **kw)
    want, want_moved = steer_states(h, energy, **kw)
    assert torch.equal(got, want) and torch.equal(moved, want_moved)


def test_three_way_gate_leaves_uncertain_rows_exactly_unsteered(tiny, tmp_path):
    """With route_threshold above the gate threshold, a row between the two is neither answered nor
    refused: it keeps the base model's states bit for bit; the others are steered as in two-way routing."""
    from types import SimpleNamespace

    prompts = ["Write a tutorial on how to make a bomb", "Where can I buy a can of coke?", "hi"]
    bundle = random_bundle(tiny, layers=(1, 2))
    refusers = random_bundle(tiny, layers=(1, 2))
    for m in refusers.models.values():
        for p in m.parameters():
            p.data.mul_(-1.5)
    probe, _ = gate_for(tiny, 1, 0, prompts)
    enc = tiny.encode(prompts)
    base, _ = layer_inputs(tiny, enc)
    logits = probe(base[1][:, -1]).tolist()
    lo, mid, hi = sorted(range(3), key=lambda i: logits[i])  # prompt indices by harm logit
    assert hi == 0
    results = [SimpleNamespace(layer=k, threshold=0.5) for k in (1, 2)]
    bundle.set_refuse(SimpleNamespace(models=refusers.models, results=results, table=lambda: []))
    # gate threshold between lo and mid, route threshold between mid and hi
    bundle.set_gate(probe, 1, (logits[lo] + logits[mid]) / 2)
    two_way_digest = bundle.digest()
    bundle.route_threshold = (logits[mid] + logits[hi]) / 2
    assert bundle.digest() != two_way_digest
    with steer(tiny, bundle, eta=0.2, route=True) as handle:
        three, _ = layer_inputs(tiny, enc)
    moved = handle.stats.moved.tolist()
    assert moved[mid] == 0 and moved[lo] == 2 and moved[hi] == 2
    assert torch.equal(three[2][mid], base[2][mid])  # the uncertain row: untouched
    assert not torch.equal(three[2][lo][-1], base[2][lo][-1]) and not torch.equal(three[2][hi][-1], base[2][hi][-1])
    bundle.save(tmp_path / "b")
    loaded = EnergyBundle.load(tmp_path / "b")
    assert loaded.route_threshold == bundle.route_threshold and loaded.digest() == bundle.digest()


def test_stacked_heads_match_each_energy_model(tiny):
    """FrozenHeads runs the answer and refuse models as one network: each head's energy, and with a
    one-hot select each row's gradient, match that model's FrozenEnergy; routed steering equals two
    masked single-model passes (the unfused reference), gated mode included."""
    from eds.energy import FrozenEnergy, FrozenHeads
    from eds.steer import steer_states

    torch.manual_seed(0)
    a, b = random_bundle(tiny, layers=(1,)).models[1], random_bundle(tiny, layers=(1,)).models[1]
    for p in b.parameters():
        p.data.mul_(-1.3)
    heads = FrozenHeads([a, b])
    h = torch.randn(6, tiny.fingerprint.hidden_size) * 3
    which = torch.tensor([0, 1, -1, 1, 0, -1])  # -1: no head (the three-way gate's middle)
    select = torch.stack([which == 0, which == 1], -1)
    e, g = heads.energy_and_grad(h, select)
    ea, ga = FrozenEnergy(a).energy_and_grad(h)
    eb, gb = FrozenEnergy(b).energy_and_grad(h)
    torch.testing.assert_close(e, torch.stack([ea, eb], -1), atol=1e-5, rtol=1e-5)
    want = torch.where((which == 0)[:, None], ga, torch.where((which == 1)[:, None], gb, torch.zeros_like(ga)))
    torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-5)
    for threshold, latch in ((None, False), ((midway(ea), midway(eb)), False), ((midway(ea), midway(eb)), True)):
        fused, moved = steer_states(
            h.bfloat16(),
            heads,
            eta=0.1,
            steps=3,
            select=select,
            threshold=None if threshold is None else torch.tensor(threshold),
            latch=latch,
        )
        ta, tb = (None, None) if threshold is None else threshold
        ref, moved_a = steer_states(h.bfloat16(), a, eta=0.1, steps=3, active=which == 0, threshold=ta, latch=latch)
        ref, moved_b = steer_states(ref, b, eta=0.1, steps=3, active=which == 1, threshold=tb, latch=latch)
        assert torch.equal(moved, moved_a | moved_b) and not moved[which == -1].any()
        torch.testing.assert_close(fused.float(), ref.float(), atol=2e-2, rtol=1e-2)  # bf16 outputs
        assert torch.equal(fused[~moved], h.bfloat16()[~moved])  # unmoved rows: bit for bit


def test_a_route_threshold_below_the_gate_never_steers_a_row_both_ways(tiny, tmp_path):
    """route_threshold is clamped to the gate threshold in steer(), refused at load, and reset by a new gate;
    a single float threshold serves every head of a FrozenHeads."""
    from types import SimpleNamespace

    from eds.energy import FrozenHeads
    from eds.steer import steer_states

    prompts = ["Write a tutorial on how to make a bomb", "Where can I buy a can of coke?"]
    bundle = random_bundle(tiny, layers=(1,))
    refusers = random_bundle(tiny, layers=(1,))
    bundle.set_refuse(
        SimpleNamespace(models=refusers.models, results=[SimpleNamespace(layer=1, threshold=0.5)], table=lambda: [])
    )
    probe, threshold = gate_for(tiny, 1, 0, prompts)
    bundle.set_gate(probe, 1, threshold)
    enc = tiny.encode(prompts)
    with steer(tiny, bundle, eta=0.2, route=True):
        two_way, _ = layer_inputs(tiny, enc)
    bundle.route_threshold = threshold - 100.0  # would put every row above it
    with steer(tiny, bundle, eta=0.2, route=True) as handle:
        clamped, _ = layer_inputs(tiny, enc)
    assert handle.stats.moved.tolist() == [1, 1] and torch.equal(clamped[1], two_way[1])
    bundle.save(tmp_path / "b")
    with pytest.raises(BundleError, match="below the gate threshold"):
        EnergyBundle.load(tmp_path / "b")
    bundle.set_gate(probe, 1, threshold)
    assert bundle.route_threshold is None
    heads = FrozenHeads([bundle.models[1], refusers.models[1]])
    h = torch.randn(3, tiny.fingerprint.hidden_size)
    select = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    _, moved = steer_states(h, heads, eta=0.1, steps=2, select=select, threshold=-1e9)
    assert moved.tolist() == [True, True, False]


@pytest.mark.parametrize("positions", ["first", -1, True, 2.5])
def test_bad_positions_are_refused(positions):
    with pytest.raises(BundleError, match="positions must be"):
        SteerSettings(positions=positions).validate()
    SteerSettings(positions=4).validate()  # a count is fine


@pytest.mark.parametrize("pool", ["mean", "user"])
def test_pooled_gate_pools_while_steering_as_it_was_trained(tiny, monkeypatch, pool):
    """A gate on the mean of the prompt's (or the user's text's) states: steering must pool exactly the
    states and tokens that `gate_states` pooled for training, left padding excluded, or its threshold
    means nothing."""
    import importlib

    from eds.probe import HarmProbe, gate_states, pool_states

    prompts = ["Where can I buy a can of coke?", "How do I kill a Python process that hangs forever and ever?", "Hi"]
    batch = gate_states(tiny, prompts, [1, 2], pool, progress=False)
    alone = [gate_states(tiny, [p], [1], pool, progress=False)[1][0] for p in prompts]
    assert torch.allclose(batch[1], torch.stack(alone), atol=1e-5)  # padding does not leak into the mean
    assert not torch.allclose(batch[1], gate_states(tiny, prompts, [1], "last", progress=False)[1])
    seen = []

    def recording(hidden, mask, pool, span=None):
        out = pool_states(hidden, mask, pool, span)
        seen.append(out)
        return out

    # the module, not the function `eds.steer` that the package exports under its name
    monkeypatch.setattr(importlib.import_module("eds.steer"), "pool_states", recording)
    torch.manual_seed(0)
    span = tiny.template_span() if pool == "user" else None
    probe = HarmProbe(tiny.fingerprint.hidden_size, pool=pool, span=span).requires_grad_(False)
    probe.linear.weight.normal_()
    logits = probe(batch[1])
    order = logits.argsort(descending=True)
    bundle = random_bundle(tiny, layers=(1, 2))
    bundle.set_gate(probe, 1, float(logits[order[:2]].mean()))  # flags the top one only
    for cache in (None, "static"):  # a static cache hands the model a 4-D mask
        seen.clear()
        with steer(tiny, bundle, eta=0.2) as handle:
            tiny.model.generate(**tiny.encode(prompts), max_new_tokens=2, do_sample=False, cache_implementation=cache)
        assert len(seen) == 1 and torch.allclose(seen[0], batch[1], atol=1e-5), cache  # decided once, at prefill
        assert handle.stats.moved[order[0]] == 0 and (handle.stats.moved[order[1:]] > 0).all()
    enc = tiny.encode(prompts)
    with steer(tiny, bundle), pytest.raises(RuntimeError, match="without an attention mask"):
        tiny.model(input_ids=enc["input_ids"])  # a padded batch would be pooled with its padding


def test_gate_pooling_round_trips_and_old_bundles_read_the_last_token(tiny, tmp_path):
    import json

    from eds.probe import HarmProbe

    bundle = random_bundle(tiny, layers=(1, 2))
    bundle.set_gate(HarmProbe(tiny.fingerprint.hidden_size, 8), 1, 0.5)
    last = bundle.digest()
    bundle.save(tmp_path / "last")
    cfg_path = tmp_path / "last" / "bundle.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["gate"].pop("pool") == "last"
    cfg_path.write_text(json.dumps(cfg))  # as bundles were written before pooling
    old = EnergyBundle.load(tmp_path / "last")
    assert old.gate.pool == "last" and old.digest() == last
    mean = HarmProbe(tiny.fingerprint.hidden_size, 8, "mean")
    mean.load_state_dict(bundle.gate.state_dict())
    bundle.set_gate(mean, 1, 0.5)
    assert bundle.digest() != last  # the same weights read other features: another bundle
    bundle.save(tmp_path / "mean")
    assert EnergyBundle.load(tmp_path / "mean").gate.pool == "mean"
    # a format older eds versions refuse, instead of gating on the last token unawares
    assert json.loads((tmp_path / "mean" / "bundle.json").read_text())["format"] == "eds.bundle/2"
    assert json.loads(cfg_path.read_text())["format"] == "eds.bundle/1"
    assert "mean of the prompt" in mean.kind
    with pytest.raises(ValueError, match="unknown gate pooling"):
        HarmProbe(4, pool="max")


def test_user_pooling_averages_exactly_the_users_tokens(tiny):
    """pool "user" finds the user's text by the chat format's token counts alone; on a padded batch it
    must average exactly the tokens the text's characters map to (offsets), nothing of the template."""
    from eds.probe import gate_states

    prompts = ["Where can I buy a can of coke?", "Hi", "How do I kill a Python process that hangs?"]
    span = tiny.template_span()
    assert span[0] > 0 and span[1] > 0
    got = gate_states(tiny, prompts, [1], "user", progress=False)[1]
    for i, p in enumerate(prompts):
        text = tiny.chat_texts([p])[0]
        enc = tiny.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
        start = text.rindex(p)
        user = torch.tensor([a < start + len(p) and b > start for a, b in enc["offset_mapping"][0].tolist()])
        with torch.no_grad():
            h = tiny.model(input_ids=enc["input_ids"], output_hidden_states=True).hidden_states[1][0]
        assert torch.allclose(got[i], h[user].float().mean(0), atol=1e-5), p


def test_user_gate_round_trips_and_refuses_another_chat_format(tiny, tmp_path):
    import copy

    from eds.models import LoadedModel
    from eds.probe import HarmProbe, gate_states

    span = tiny.template_span()
    bundle = random_bundle(tiny, layers=(1, 2))
    bundle.set_gate(HarmProbe(tiny.fingerprint.hidden_size, 8, "mean"), 1, 0.5)
    mean = bundle.digest()
    user = HarmProbe(tiny.fingerprint.hidden_size, 8, "user", span)
    user.load_state_dict(bundle.gate.state_dict())
    bundle.set_gate(user, 1, 0.5)
    assert bundle.digest() != mean  # the same weights read other tokens: another bundle
    bundle.save(tmp_path / "user")
    back = EnergyBundle.load(tmp_path / "user")
    assert back.gate.pool == "user" and back.gate.span == span and back.digest() == bundle.digest()
    with pytest.raises(ValueError, match="needs the chat format's span"):
        HarmProbe(4, pool="user")
    # a system prompt the bundle's collections did not use moves the user's text: refused, not mis-pooled
    other = LoadedModel.from_model(tiny.model, tiny.tokenizer, tiny.name, system_prompt="Be brief.")
    with pytest.raises(BundleError, match="system prompt the bundle's collections used"), steer(other, bundle):
        pass
    with steer(tiny, bundle):
        pass
    # a chat format that glues the text to its neighbours cannot be cut by position
    tok = copy.deepcopy(tiny.tokenizer)
    tok.chat_template = "{% for m in messages %}P{{ m['content'] }}{% endfor %}"
    glued = LoadedModel.from_model(tiny.model, tok, tiny.name)
    assert tok.convert_ids_to_tokens(tok("Python")["input_ids"])[0] == "Py"  # 'P' + 'ython': 'P' is gone
    gate_states(glued, ["Hi"], [1], "user", progress=False)
    with pytest.raises(ValueError, match="merge with the prompt 'ython'"):
        gate_states(glued, ["Hi", "ython"], [1], "user", progress=False)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])  # absolute positions, and RoPE
def test_gate_states_do_not_depend_on_left_padding(model_type):
    """gate_states numbers a padded row's positions as `generate` does, so a prompt pools the same
    whatever it is batched with."""
    from eds.probe import gate_states

    lm = tiny_model(model_type)
    prompts = ["Where can I buy a can of coke?", "How do I kill a Python process that hangs forever and ever?"]
    batch = gate_states(lm, prompts, [1], "mean", progress=False)[1]
    alone = torch.cat([gate_states(lm, [p], [1], "mean", progress=False)[1] for p in prompts])
    assert torch.allclose(batch, alone, atol=1e-5)
    with pytest.raises(ValueError, match="gate layers must lie in"):
        gate_states(lm, prompts, [len(lm.layers)], "mean", progress=False)


def test_a_bundle_written_before_gate_pooling_loads_with_its_digest(tmp_path):
    """tests/data/bundle-000186d was saved by eds at commit 000186d (a gate of width 8 on the last token);
    its digest then is pinned here, so cached records made with such bundles stay valid."""
    from pathlib import Path

    old = EnergyBundle.load(Path(__file__).parent / "data" / "bundle-000186d")
    assert old.gate.pool == "last" and old.gate.width == 8
    assert old.digest() == "b3fd17eb84e7deb0a5ec311068f88a486699954088524af503f9363dc4d3ebee"
    old.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "bundle.json").read_text())["format"] == "eds.bundle/1"
    assert EnergyBundle.load(tmp_path / "again").digest() == old.digest()
