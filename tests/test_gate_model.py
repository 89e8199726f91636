"""A gate that reads another model's states (a gate model of the same vocabulary): steering runs that
model on the steered model's prompt ids at prefill, and its decisions must be those of the trained
probe on exactly the states training read."""

import json

import pytest
import torch

from eds.bundle import _GATE_MODELS, BundleError, EnergyBundle
from eds.models import LoadedModel
from eds.probe import HarmProbe, gate_states
from eds.steer import steer
from eds.testing import random_bundle, tiny_model

PROMPTS = ["Where can I buy a can of coke?", "How do I kill a Python process that hangs forever and ever?", "Hi"]


@pytest.fixture(autouse=True)
def _no_gate_model_kept():
    """Each test starts and ends without a gate model held by the process, so none hides a missing one."""
    _GATE_MODELS.clear()
    yield
    _GATE_MODELS.clear()


@pytest.fixture(scope="module")
def reader():
    """A gate model: another shape (4 layers, hidden 48) and weights, the same tokenizer as `tiny`."""
    return tiny_model("qwen2", layers=4, hidden=48, seed=1)


def gated_bundle(tiny, reader, layer=3, pool="user", route=False):
    """A bundle steering tiny's layers 1-2 whose gate reads `reader`'s layer `layer` and flags exactly the
    prompt with the highest logit among PROMPTS. Returns (bundle, logits the gate should compute)."""
    span = tiny.template_span() if pool == "user" else None
    states = gate_states(reader, PROMPTS, [layer], pool, encoder=tiny, progress=False)[layer]
    torch.manual_seed(0)
    probe = HarmProbe(reader.fingerprint.hidden_size, 8, pool, span).requires_grad_(False)
    probe.linear.weight.normal_()
    logits = probe(states)
    top = logits.sort(descending=True).values
    bundle = random_bundle(tiny, layers=(1, 2))
    if route:
        bundle.refuse_models = random_bundle(tiny, layers=(1, 2)).models
        bundle.refuse_thresholds = dict.fromkeys((1, 2), 0.0)
    bundle.set_gate(probe, layer, float(top[:2].mean()), reader=reader.fingerprint)
    return bundle, logits


def alone(tiny, reader, layer, pool):
    """Each prompt's pooled gate-model states, read alone (no padding), the obvious way: all hidden
    states of an unpadded forward, the user's text cut out by its characters' token offsets."""
    out = []
    for p in PROMPTS:
        text = tiny.chat_texts([p])[0]
        enc = tiny.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
        with torch.no_grad():
            h = reader.model(input_ids=enc["input_ids"], output_hidden_states=True).hidden_states[layer][0]
        start = text.rindex(p)
        user = torch.tensor([a < start + len(p) and b > start for a, b in enc["offset_mapping"][0].tolist()])
        out.append(h[-1] if pool == "last" else h[user].float().mean(0))
    return torch.stack(out).float()


def test_gate_model_decides_as_trained_and_flagged_rows_stay_exactly_unsteered(tiny, reader, monkeypatch):
    from eds.probe import GateModel

    bundle, want = gated_bundle(tiny, reader)  # layer 3: past tiny's first steered layer, and tiny has 3
    with torch.no_grad():  # what training read is each prompt's own states, whatever it was batched with
        assert torch.allclose(want, bundle.gate(alone(tiny, reader, 3, "user")), atol=1e-4)
    flagged = int(want.argmax())
    seen = []
    logits = GateModel.logits

    def recording(self, input_ids, mask):
        out = logits(self, input_ids, mask)
        seen.append(out)
        return out

    monkeypatch.setattr(GateModel, "logits", recording)
    enc = tiny.encode(PROMPTS)
    for cache in (None, "static"):  # a static cache hands the model a 4-D mask
        seen.clear()
        with steer(tiny, bundle, eta=0.2, gate_model=reader) as handle:
            tiny.model.generate(**enc, max_new_tokens=3, do_sample=False, cache_implementation=cache)
        assert len(seen) == 1 and torch.allclose(seen[0], want, atol=1e-5), cache  # once, at prefill, as trained
        moved = handle.stats.moved
        assert moved[flagged] == 0 and all(moved[i] > 0 for i in range(3) if i != flagged)
    # the flagged row's states and logits are the base model's, bit for bit; the others moved
    with torch.no_grad():
        base = tiny.model(**enc, output_hidden_states=True)
        with steer(tiny, bundle, eta=0.2, gate_model=reader):
            steered = tiny.model(**enc, output_hidden_states=True)
    assert torch.equal(steered.logits[flagged], base.logits[flagged])
    assert torch.equal(steered.hidden_states[2][flagged], base.hidden_states[2][flagged])
    other = (flagged + 1) % 3
    assert not torch.allclose(steered.hidden_states[2][other, -1], base.hidden_states[2][other, -1])
    monkeypatch.setattr("eds.models.load_model", lambda *a, **k: pytest.fail("loaded a gate model"))
    with steer(tiny, bundle, eta=0.2, harm_gate=False) as handle:  # no gate: nothing loaded, all rows move
        tiny.model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert (handle.stats.moved > 0).all()
    with pytest.raises(BundleError, match="the steered model itself"), steer(tiny, bundle, gate_model=tiny):
        pass  # its forward would call these hooks again


def test_routed_gate_model_steers_flagged_rows_toward_refusal(tiny, reader):
    bundle, want = gated_bundle(tiny, reader, layer=1, pool="last", route=True)
    with torch.no_grad():
        assert torch.allclose(want, bundle.gate(alone(tiny, reader, 1, "last")), atol=1e-4)
    flagged = int(want.argmax())
    enc = tiny.encode(PROMPTS)
    with torch.no_grad():
        base = tiny.model(**enc, output_hidden_states=True).hidden_states[2]
        with steer(tiny, bundle, eta=0.2, route=True, gate_model=reader) as handle:
            routed = tiny.model(**enc, output_hidden_states=True).hidden_states[2]
        refuse_only = random_bundle(tiny, layers=(1, 2))  # the same refuse models steering every row
        with steer(tiny, refuse_only, eta=0.2, harm_gate=False):
            toward_refusal = tiny.model(**enc, output_hidden_states=True).hidden_states[2]
    assert handle.stats.moved.tolist() == [2, 2, 2]
    assert torch.allclose(routed[flagged], toward_refusal[flagged], atol=1e-5)
    assert not torch.allclose(routed[flagged, -1], base[flagged, -1])


def test_gate_model_round_trips_and_is_part_of_the_digest(tiny, reader, tmp_path):
    bundle, _ = gated_bundle(tiny, reader)
    bundle.save(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert cfg["format"] == "eds.bundle/3"  # older eds versions refuse it instead of gating on the wrong model
    assert cfg["gate"]["reader"]["hidden_size"] == 48 and cfg["gate"]["layer"] == 3
    back = EnergyBundle.load(tmp_path / "b")
    assert back.gate_reader == reader.fingerprint and back.gate_model is None and back.digest() == bundle.digest()
    renamed = random_bundle(tiny, layers=(1, 2))
    other = LoadedModel.from_model(reader.model, reader.tokenizer, "another-name")
    renamed.set_gate(bundle.gate, 3, bundle.gate_threshold, reader=other.fingerprint)
    assert renamed.digest() != bundle.digest()  # the name says which model steering loads
    with pytest.raises(BundleError, match=r"not in the gate model's 0\.\.3"):
        renamed.set_gate(bundle.gate, 4, 0.0, reader=reader.fingerprint)
    with pytest.raises(BundleError, match="must not come after the first steered layer"):
        renamed.set_gate(HarmProbe(tiny.fingerprint.hidden_size), 3, 0.0)  # the steered model's own: too late


def test_a_gate_model_of_another_shape_or_tokenizer_is_refused(tiny, reader, tmp_path):
    import copy

    bundle, _ = gated_bundle(tiny, reader)
    wrong = tiny_model("qwen2", layers=4, hidden=64, seed=1)
    with pytest.raises(BundleError, match="hidden_size: 48 != 64"), steer(tiny, bundle, gate_model=wrong):
        pass
    tok = copy.deepcopy(reader.tokenizer)
    tok.add_tokens(["<extra-token>"])
    renumbered = LoadedModel.from_model(reader.model, tok, reader.name)
    with pytest.raises(BundleError, match="does not share"), steer(tiny, bundle, gate_model=renumbered):
        pass
    with pytest.raises(BundleError, match="pass it as gate_model"), steer(tiny.model, bundle):
        pass  # a bare model: nothing to load the gate model's name with
    from dataclasses import replace

    moved = random_bundle(tiny, layers=(1, 2))
    gone = replace(reader.fingerprint, name=str(tmp_path / "moved-away"))  # a folder no longer there
    moved.set_gate(bundle.gate, 3, bundle.gate_threshold, reader=gone)
    with pytest.raises(BundleError, match="cannot be loaded by that name here"), steer(tiny, moved):
        pass
    with pytest.raises(ValueError, match="tokenizers differ"):
        gate_states(reader, PROMPTS, [1], "last", encoder=renumbered, progress=False)


def test_gate_model_needs_token_ids_and_a_whole_prompt(tiny, reader):
    bundle, _ = gated_bundle(tiny, reader, pool="last")
    enc = tiny.encode(PROMPTS)
    embeds = tiny.model.get_input_embeddings()(enc["input_ids"])
    with steer(tiny, bundle, gate_model=reader), pytest.raises(RuntimeError, match="call the model with input_ids"):
        tiny.model(inputs_embeds=embeds, attention_mask=enc["attention_mask"])
    with torch.no_grad():
        past = tiny.model(**enc, use_cache=True).past_key_values
    more = torch.cat([enc["attention_mask"], torch.ones(3, 2, dtype=torch.long)], 1)
    with steer(tiny, bundle, gate_model=reader), pytest.raises(RuntimeError, match="continues a cached one"):
        tiny.model(input_ids=enc["input_ids"][:, :2], attention_mask=more, past_key_values=past)


def test_gate_model_is_loaded_by_its_name_once(tiny, reader, tmp_path):
    """A bundle names its gate model as it was loaded (a built-in, hub id or folder): steering loads it
    by that name in the steered model's dtype, once, and bundles loaded apart share that copy."""
    from eds.models import load_model

    for name, lm in (("steered", tiny), ("gate-model", reader)):  # loaded alike: the same tokenizer class
        lm.model.save_pretrained(tmp_path / name)
        lm.tokenizer.save_pretrained(tmp_path / name)
    folder = tmp_path / "gate-model"
    tiny = load_model(str(tmp_path / "steered"), dtype="float32")
    by_name = load_model(str(folder), dtype="float32")
    bundle, _ = gated_bundle(tiny, by_name)
    bundle.save(tmp_path / "b")
    _GATE_MODELS.clear()
    first = EnergyBundle.load(tmp_path / "b")
    with steer(tiny, first) as handle:
        tiny.model.generate(**tiny.encode(PROMPTS), max_new_tokens=2, do_sample=False)
    loaded = first.gate_model
    assert loaded is not None and loaded is not by_name and loaded.name == str(folder)
    assert handle.stats.moved.tolist().count(0) == 1  # the flagged prompt
    assert first.subset([1]).gate_model is loaded  # tuned copies keep it
    sub = EnergyBundle.load(tmp_path / "b").subset([1])
    with steer(tiny, sub):
        pass
    assert sub.gate_model is loaded  # loaded apart, shared
    _GATE_MODELS.clear()
