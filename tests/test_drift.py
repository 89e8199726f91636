import pytest
import torch
from transformers import DynamicCache

from eds.drift import _gen_kwargs, forced_logits, kl_per_position, measure_drift
from eds.models import cache_keyword
from eds.testing import random_bundle

PROMPTS = ["How do I kill a Python process?", "hi", "Where can I buy a can of coke?"]


@pytest.fixture(scope="module")
def bundle(tiny):
    return random_bundle(tiny, layers=(0, 2))


def steered_greedy(lm, enc, bundle, n, **kw):
    """Steered greedy generation with the logits it chose from (reference for the forced pass)."""
    from eds.steer import steer

    with torch.inference_mode(), steer(lm, bundle, **kw):
        out = lm.model.generate(
            **enc, **_gen_kwargs(lm, n, False, 0.7, 0.95), return_dict_in_generate=True, output_logits=True
        )
    return out.sequences[:, enc["input_ids"].shape[1] :], torch.stack(out.logits, dim=1)


@pytest.mark.parametrize("off", [{"steps": 0}, {"eta": 0.0}])
def test_no_steering_gives_zero_kl_and_unchanged_replies(tiny, bundle, off):
    res = measure_drift(tiny, bundle, PROMPTS, max_new_tokens=6, batch_size=2, progress=False, **off)
    assert res.mean_kl == 0.0 and res.first_token_kl == 0.0 and res.kl_quantiles["max"] == 0.0
    assert res.unchanged.k == res.unchanged.n == 3
    assert all(r["first_divergence"] is None for r in res.records)
    assert res.positions == sum(r["positions"] for r in res.records) > 3


def test_strong_steering_moves_the_distributions(tiny, bundle):
    res = measure_drift(tiny, bundle, PROMPTS, max_new_tokens=6, batch_size=2, progress=False, eta=0.5, steps=3)
    assert res.mean_kl > 1e-4 and res.first_token_kl > 1e-4
    assert all(r["kl_mean"] > 0 and r["kl_first"] > 0 and r["states_moved"] > 0 for r in res.records)
    assert res.steered.k == 3
    for r in res.records:  # the same token path under both criteria: same ids imply the same text
        if r["first_divergence"] is None:
            assert r["unchanged"]
    d = res.to_dict()
    assert d["n"] == 3 and d["unchanged_share"] == res.unchanged.value and d["mean_kl"] == res.mean_kl


def test_kl_is_positive_and_zero_for_equal_distributions():
    torch.manual_seed(0)
    a, b = torch.randn(4, 7, 50), torch.randn(4, 7, 50)
    kl = kl_per_position(a, b)
    assert kl.shape == (4, 7) and (kl > 0).all()
    assert torch.equal(kl_per_position(a, a), torch.zeros(4, 7))
    assert torch.allclose(kl_per_position(a, a + 3.0), torch.zeros(4, 7), atol=1e-6)  # same distribution
    p, q = torch.softmax(a[0, 0], -1), torch.softmax(b[0, 0], -1)
    assert torch.isclose(kl[0, 0], (p * (p / q).log()).sum(), atol=1e-5)


def test_forced_steered_logits_equal_those_of_steered_generation(tiny, bundle):
    """Forcing the steered reply itself reproduces steered greedy decoding position by position."""
    enc = tiny.encode(PROMPTS)
    gen, ref = steered_greedy(tiny, enc, bundle, 6, eta=0.3, steps=2)
    paths = [row.tolist() for row in gen]
    logits, greedy, moved = forced_logits(tiny, enc, paths, bundle=bundle, eta=0.3, steps=2)
    assert torch.equal(logits[:, : ref.shape[1]], ref.float())
    assert torch.equal(greedy, gen)
    assert all(m > 0 for m in moved)
    plain, _, _ = forced_logits(tiny, enc, paths)
    assert not torch.allclose(plain, logits)  # and steering did act on the forced pass


def manual_teacher_forcing(lm, enc, paths, bundle=None, **kw):
    """The forcing spelled out: a prefill, then one token per forward with the KV cache."""
    from contextlib import nullcontext

    from eds.steer import steer

    ids, mask = enc["input_ids"], enc["attention_mask"]
    toks = torch.tensor(paths)
    out_logits = []
    with torch.inference_mode(), steer(lm, bundle, **kw) if bundle is not None else nullcontext():
        cache = {cache_keyword(lm.model): DynamicCache()}
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache, use_cache=True)
        out_logits.append(out.logits[:, -1].float())
        for t in range(toks.shape[1] - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = mask.sum(-1, keepdim=True) - 1
            step = {"attention_mask": mask, "position_ids": pos, "use_cache": True, **cache}
            out = lm.model(input_ids=toks[:, t : t + 1], **step)
            out_logits.append(out.logits[:, -1].float())
    return torch.stack(out_logits, dim=1)


def test_forcing_through_generate_matches_a_hand_written_cache_loop(tiny, bundle):
    enc = tiny.encode(PROMPTS[:2])
    paths = [[40, 41, 42, 43, 44], [50, 51, 52, 53, 54]]
    for kw in ({}, {"bundle": bundle, "eta": 0.3, "steps": 2}):
        forced, _, _ = forced_logits(tiny, enc, paths, **kw)
        manual = manual_teacher_forcing(tiny, enc, paths, **kw)
        assert torch.allclose(forced, manual, atol=1e-5), kw


def test_given_base_replies_are_the_forced_path(tiny, bundle):
    base = ["Use the kill command.", "", "Any grocery store sells it."]
    res = measure_drift(tiny, bundle, PROMPTS, base_replies=base, max_new_tokens=5, progress=False, steps=0)
    assert res.mean_kl == 0.0
    assert [r["positions"] for r in res.records] == [
        min(5, len(tiny.tokenizer.encode(b, add_special_tokens=False))) or 1 for b in base
    ]
    assert [r["base"] for r in res.records] == base
    with pytest.raises(ValueError, match="2 base replies for 3 prompts"):
        measure_drift(tiny, bundle, PROMPTS, base_replies=base[:2], progress=False)
