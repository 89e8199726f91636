"""oneDNN-packed linear layers: same outputs as nn.Linear, same model, reversible."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from eds import cpu_linear, models
from eds.cpu_linear import (
    PackedLinear,
    pack_linears,
    packed_count,
    packing_available,
    repack_linears,
    should_pack,
    unpack_linears,
)
from eds.generate import generate
from eds.testing import random_bundle, tiny_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_linear(bias):
    torch.manual_seed(0)
    lin = nn.Linear(48, 80, bias=bias).requires_grad_(False)
    x = torch.randn(3, 7, 48)
    want = lin(x)
    assert pack_linears(nn.Sequential(lin)) == 1 and type(lin) is PackedLinear
    got = lin(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a weight changed in place is repacked; one replaced too
    with torch.no_grad():
        lin.weight.mul_(2)
    torch.testing.assert_close(lin(x), nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    lin.weight = nn.Parameter(torch.randn(80, 48), requires_grad=False)
    torch.testing.assert_close(lin(x), nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


def test_the_packed_op_is_what_runs(monkeypatch):
    lin = nn.Linear(8, 4).requires_grad_(False)
    pack_linears(lin)
    monkeypatch.setattr(cpu_linear, "F", SimpleNamespace(linear=lambda *a: pytest.fail("took the plain path")))
    assert lin(torch.randn(2, 8)).shape == (2, 4)


def test_packed_linear_keeps_gradients():
    lin = nn.Linear(8, 4)
    pack_linears(lin)
    x = torch.randn(2, 8, requires_grad=True)
    lin(x).sum().backward()  # the packed op has no backward: this must take the plain path
    assert x.grad is not None and lin.weight.grad is not None
    lin.weight.requires_grad_(False)
    lin.bias.grad = None
    lin(torch.randn(2, 8)).sum().backward()  # the bias alone wants a gradient: still the plain path
    assert lin.bias.grad is not None
    lin.bfloat16()  # no longer float32: the plain path, in the new dtype, and the packed copy freed
    assert lin(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16 and lin._packed is None


def test_copies_and_data_edits():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8).requires_grad_(False)
    x = torch.randn(3, 16)
    pack_linears(lin)
    want = lin(x)
    # pickle's own path (reduce, then setstate), without serialising: the opaque copy stays behind
    rebuild, args, state = lin.__reduce_ex__(2)[:3]
    unpickled = rebuild(*args)
    unpickled.__setstate__(state)
    for twin in (copy.deepcopy(lin), unpickled):
        assert type(twin) is PackedLinear and twin._packed is None
        torch.testing.assert_close(twin(x), want, rtol=1e-5, atol=1e-5)
    lin.weight.data.mul_(3)  # no version counter sees this: repack_linears says so
    assert repack_linears(lin) == 1
    torch.testing.assert_close(lin(x), nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # weights made in inference mode keep no version counter
        made = nn.Linear(16, 8)
    pack_linears(made)
    with torch.inference_mode():
        torch.testing.assert_close(made(x), nn.functional.linear(x, made.weight, made.bias), rtol=1e-5, atol=1e-5)


def test_packed_model_generates_the_same_and_unpacks():
    lm = tiny_model("qwen2", layers=4)
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    ids = {n: id(p) for n, p in lm.model.named_parameters()}
    prompts = ["hello there", "a longer prompt about the fox", "x"]
    plain, _ = generate(lm, prompts, max_new_tokens=8)
    bundle = random_bundle(lm, layers=(1, 2), eta=0.5)
    plain_steered, moved = generate(lm, prompts, bundle=bundle, max_new_tokens=8)
    n_linear = sum(type(m) is nn.Linear for m in lm.model.modules())
    assert pack_linears(lm.model) == n_linear == packed_count(lm.model) > 0
    packed, _ = generate(lm, prompts, max_new_tokens=8)
    packed_steered, moved_packed = generate(lm, prompts, bundle=bundle, max_new_tokens=8)
    assert packed == plain and packed_steered == plain_steered and moved_packed == moved
    assert ids == {n: id(p) for n, p in lm.model.named_parameters()}  # the same parameters: ties kept
    assert all(torch.equal(v, state[k]) for k, v in lm.model.state_dict().items()) and state.keys() == set(
        lm.model.state_dict()
    )
    assert unpack_linears(lm.model) == n_linear and packed_count(lm.model) == 0
    assert generate(lm, prompts, max_new_tokens=8)[0] == plain


def test_should_pack_only_float32_on_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("EDS_PACK_LINEAR", raising=False)
    assert should_pack(cpu, torch.float32)
    assert not should_pack(cpu, torch.bfloat16) and not should_pack(cuda, torch.float32)
    assert not should_pack(cpu, torch.float32, asked=False)
    assert not should_pack(cpu, torch.bfloat16, asked=True)
    monkeypatch.setenv("EDS_PACK_LINEAR", "0")
    assert not should_pack(cpu, torch.float32) and should_pack(cpu, torch.float32, asked=True)
    lm = tiny_model("qwen2", dtype=torch.bfloat16)
    assert pack_linears(lm.model) == 0


def test_load_model_packs_float32_on_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("EDS_PACK_LINEAR", raising=False)
    tiny = tiny_model("qwen2")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    assert packed_count(models.load_model(str(tmp_path), dtype="float32", device="cpu").model) > 0
    assert packed_count(models.load_model(str(tmp_path), dtype="bfloat16", device="cpu").model) == 0
    assert packed_count(models.load_model(str(tmp_path), dtype="auto", device="cpu").model) > 0  # saved in float32
    unpacked = models.load_model(str(tmp_path), dtype="float32", device="cpu", pack_linear=False)
    assert packed_count(unpacked.model) == 0
