import copy

import pytest
import torch
from test_collect import KeywordJudge, prompt_file

from eds.bundle import EnergyBundle
from eds.collect import CollectConfig, collect
from eds.train import TrainConfig, TrainError, plot_auroc, split_rows, train, train_layer


def test_training_separates_two_gaussian_classes():
    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(16)
    shift[:4] = 2.5  # Mahalanobis distance 5: the best possible AUROC is 0.9998
    good = torch.randn(400, 16, generator=g) * 2 + 5  # offset and scale the normaliser must handle
    bad = torch.randn(400, 16, generator=g) * 2 + 5 + shift * 2
    x = torch.cat([good[:300], bad[:300]])
    y = torch.cat([torch.ones(300), torch.zeros(300)]).bool()
    xv = torch.cat([good[300:], bad[300:]])
    yv = torch.cat([torch.ones(100), torch.zeros(100)]).bool()
    model, m = train_layer(x, y, xv, yv, TrainConfig(max_steps=300, batch_size=128), 16)
    assert m["val_auroc"] > 0.99 and m["train_auroc"] > 0.99
    with torch.no_grad():
        e = model(xv)
    assert (e[yv] < m["threshold"]).float().mean() > 0.95 and (e[~yv] >= m["threshold"]).float().mean() > 0.95
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_split_is_by_prompt_and_holds_out_datasets():
    records = [{"dataset": d, "outcome": o} for d in ("a", "b", "c") for o in ("good", "bad") for _ in range(10)]
    tr, va = split_rows(records, TrainConfig(val_fraction=0.2, val_datasets=("c",)))
    assert not set(tr) & set(va) and len(tr) + len(va) == 60
    assert all(records[i]["dataset"] != "c" for i in tr) and sum(records[i]["dataset"] == "c" for i in va) == 20
    assert sum(records[i]["dataset"] == "a" for i in va) == 4


@pytest.fixture(scope="module")
def tiny_collection(tmp_path_factory, tiny):
    tmp = tmp_path_factory.mktemp("col")
    cfg = CollectConfig(data=(str(prompt_file(tmp, 6)),), max_new_tokens=3, gen_tokens=2, batch_size=20)
    return collect(tiny, tmp / "run", cfg, judge=KeywordJudge(), progress=False)


def test_train_on_a_collection_into_a_bundle(tiny_collection, tiny, tmp_path):
    res = train(tiny_collection, TrainConfig(max_steps=30, top_k=2, positions="all"), progress=False)
    assert sorted(res.models) == [0, 1, 2] and len(res.chosen) == 2
    best = sorted(res.results, key=lambda r: -r.val_auroc)[:2]
    assert sorted(r.layer for r in best) == res.chosen
    assert all(0 <= r.val_auroc <= 1 for r in res.results)
    plot_auroc(res, str(tmp_path / "auroc.png"))
    assert (tmp_path / "auroc.png").stat().st_size > 1000
    bundle = EnergyBundle.from_training(res, tiny.fingerprint)
    bundle.save(tmp_path / "bundle")
    loaded = EnergyBundle.load(tmp_path / "bundle")
    assert loaded.layers == res.chosen and loaded.data_summary["train_rows"] + loaded.data_summary["val_rows"] == 60
    assert [m["layer"] for m in loaded.metrics] == [0, 1, 2]


def test_train_errors(tiny_collection):
    with pytest.raises(TrainError, match=r"out of range: the model has layers 0..2"):
        train(tiny_collection, TrainConfig(layers=(5,)))
    with pytest.raises(TrainError, match="positions"):
        train(tiny_collection, TrainConfig(positions="middle"))
    with pytest.raises(TrainError, match="training split has no 'good' rows"):
        train(tiny_collection, TrainConfig(val_datasets=("mix",)))


def test_train_refuses_test_split_rows(tiny_collection):
    col = copy.copy(tiny_collection)
    col.records = [dict(r, split="test") if i < 2 else r for i, r in enumerate(tiny_collection.records)]
    with pytest.raises(TrainError, match=r"test-split prompts \(mix: 2\)|test-split prompts"):
        train(col, TrainConfig(max_steps=1))


def test_gate_with_a_hidden_layer_separates_what_a_linear_gate_cannot():
    from eds.energy import auroc
    from eds.probe import fit_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 4, generator=g)
    harmful = x[:, 0].abs() > 0.8  # both tails: no hyperplane separates them
    tr, va = slice(0, 600), slice(600, None)
    linear = fit_probe(x[tr], harmful[tr], width=0)
    mlp = fit_probe(x[tr], harmful[tr], width=32)
    with torch.no_grad():
        assert auroc(linear(x[va]), harmful[va]) < 0.7
        assert auroc(mlp(x[va]), harmful[va]) > 0.95
    assert mlp.width == 32 and not mlp.training and not any(p.requires_grad for p in mlp.parameters())


def test_bundle_saved_before_gate_widths_loads_a_linear_gate(tiny, tmp_path):
    import json

    from eds.bundle import BundleError
    from eds.probe import HarmProbe
    from eds.testing import random_bundle

    bundle = random_bundle(tiny, layers=(1, 2))
    linear = HarmProbe(tiny.fingerprint.hidden_size)
    # the tensors a linear gate had before widths existed: the weights file and digest() are unchanged
    assert set(linear.state_dict()) == {"linear.weight", "linear.bias", "mean", "std"}
    bundle.set_gate(linear, 1, 0.5)
    bundle.save(tmp_path / "b")
    cfg_path = tmp_path / "b" / "bundle.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["gate"].pop("width") == 0
    cfg_path.write_text(json.dumps(cfg))
    assert EnergyBundle.load(tmp_path / "b").gate.width == 0
    cfg["gate"]["width"] = 16  # the weights say linear: a clear error, not a silent mismatch
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="gate does not match its config"):
        EnergyBundle.load(tmp_path / "b")
