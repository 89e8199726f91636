import json

import pytest
from typer.testing import CliRunner

from eds.cli import app
from eds.cpu_linear import packing_available
from eds.models import dtype_name

runner = CliRunner()


def test_datasets_and_models_listing(eds_cache):
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0 and "orbench_hard" in res.output and "train 662" in res.output
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "missing" in res.output


@pytest.fixture
def model_folder(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_collect_on_a_local_model_folder(tmp_path, model_folder):
    data = tmp_path / "p.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"question {i}?", "label": ["benign", "harmful"][i % 2]}) + "\n" for i in range(6)
        )
    )
    args = [
        "collect",
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--max-new-tokens",
        "3",
        "--gen-tokens",
        "1",
        "--dtype",
        "float32",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "harmful answered" in res.output and "saved 6 rows x 3 layers" in res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(manifest["plan"]) == 6 and manifest["judge"] == "substring"


def test_clear_errors(tmp_path, eds_cache, model_folder):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "label": "benign"}\n{"prompt": "x", "label": "maybe"}\n')
    res = runner.invoke(
        app,
        [
            "collect",
            "--data",
            str(bad),
            "--model",
            str(model_folder),
            "--out",
            str(tmp_path / "run"),
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 2 and "bad.jsonl, line 2: unknown label 'maybe'" in res.output.replace("\n", "")
    res = runner.invoke(app, ["collect", "--model", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "cannot load" in res.output
    res = runner.invoke(app, ["fetch", "gpt-17"])
    assert res.exit_code == 2 and "unknown built-in model" in res.output
    res = runner.invoke(app, ["collect", "--max-new-tokens", "2", "--gen-tokens", "4"])
    assert res.exit_code == 2 and "must exceed gen_tokens" in res.output


def test_collect_train_generate_chain(tmp_path, model_folder):
    model = model_folder
    res = runner.invoke(
        app,
        [
            "collect",
            "--model",
            str(model),
            "--data",
            "advbench:train:20",
            "--data",
            "alpaca:train:20",
            "--out",
            str(tmp_path / "run"),
            "--max-new-tokens",
            "3",
            "--gen-tokens",
            "1",
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", str(tmp_path / "run"), "--out", str(tmp_path / "bundle"), "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert "chosen layers" in res.output and (tmp_path / "bundle" / "auroc_by_layer.png").exists()
    assert "harm gate (width 256)" in res.output  # the CLI's default is probe.GATE_WIDTH
    from eds.probe import GATE_WIDTH

    assert GATE_WIDTH == 256
    res = runner.invoke(
        app,
        [
            "generate",
            "hello there",
            "--model",
            str(model),
            "--bundle",
            str(tmp_path / "bundle"),
            "--max-new-tokens",
            "4",
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "base:" in res.output and "states moved" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "run"), "--layers", "7"])
    assert res.exit_code == 2 and "out of range" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "run"), "--gate-width", "-1"])
    assert res.exit_code == 2 and "gate-width" in res.output


def test_bench_verb_writes_its_results_file(tmp_path):
    args = ["bench", "--config", "tiny", "--batch-sizes", "1", "2", "--prompt-len", "8", "--new-tokens", "3"]
    res = runner.invoke(app, [*args, "--repeats", "1", "--out-dir", str(tmp_path), "--tag", "t"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "t-tiny.json").read_text())
    assert doc["meta"]["command"].startswith("eds bench --config tiny")
    assert [r["batch"] for r in doc["results"]] == [1, 2]
    # the dtype and linear layers load_model would use here, recorded as what ran
    assert doc["meta"]["settings"]["dtype"] == dtype_name(None, "cpu")
    assert (doc["packed_linears"] > 0) == (doc["meta"]["settings"]["dtype"] == "float32" and packing_available())
    for r in doc["results"]:
        assert set(r["modes"]) == {"plain", "always", "gated"}
        assert all(isinstance(r["ratios"][m]["decode_overhead_pct"], float) for m in ("always", "gated"))
    assert "decode" in (tmp_path / "t-tiny.md").read_text()


def test_bench_times_a_gate_model_in_the_routed_mode(tmp_path, monkeypatch):
    from eds.probe import GateModel

    calls = []
    logits = GateModel.logits
    monkeypatch.setattr(GateModel, "logits", lambda self, ids, mask: calls.append(ids.shape) or logits(self, ids, mask))
    args = ["bench", "--config", "tiny", "--batch-sizes", "2", "--prompt-len", "8", "--new-tokens", "3", "--route"]
    res = runner.invoke(
        app, [*args, "--gate-config", "tiny", "--gate-layer", "1", "--repeats", "1", "--out-dir", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(next(tmp_path.glob("*-tiny.json")).read_text())
    assert doc["bundle"]["gate_model"] == {"config": "tiny", "layer": 1}
    assert set(doc["results"][0]["ratios"]) == {"always", "gated", "routed", "routed-gate-model"}
    # once per generate of that mode (prefill and full, warm-up and repeat): the prompt, never a decode step
    assert calls == [(2, 8)] * 4
    assert "a gate model" in next(tmp_path.glob("*-tiny.md")).read_text()
    res = runner.invoke(app, ["bench", "--config", "tiny", "--gate-config", "tiny"])
    assert res.exit_code == 2 and "add --route" in res.output


def test_bench_profile_only_skips_the_whole_generate_timings(tmp_path):
    args = ["bench", "--config", "tiny", "--prompt-len", "8", "--new-tokens", "3", "--profile-only"]
    res = runner.invoke(app, [*args, "--profile-batches", "2", "--out-dir", str(tmp_path), "--tag", "p"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "p-tiny.json").read_text())
    assert doc["results"] == []
    assert list(doc["profile"]["decode_forward"]) == ["2"]
    assert "one decode forward, batch 2" in (tmp_path / "p-tiny.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "19-17"], "write it low-high"),
        (["--layers", "17,18", "--top-k", "2"], "not both"),
        (["--route", "maybe"], "on or off"),
    ],
)
def test_tune_rejects_bad_options_before_loading_anything(tmp_path, args, message):
    res = runner.invoke(app, ["tune", str(tmp_path / "no-bundle"), "--out", str(tmp_path / "t"), *args])
    assert res.exit_code == 2 and message in res.output.replace("\n", "")
    assert not (tmp_path / "t").exists()


def _collect(model, out, *specs: str) -> None:
    data = [a for s in specs for a in ("--data", s)]
    args = ["collect", "--model", str(model), *data, "--out", str(out), "--max-new-tokens", "3", "--gen-tokens", "1"]
    res = runner.invoke(app, [*args, "--dtype", "float32"])
    assert res.exit_code == 0, res.output


def test_gate_data_trains_the_gate_and_nothing_else(tmp_path, model_folder):
    import torch
    from safetensors.torch import load_file

    _collect(model_folder, tmp_path / "run", "advbench:train:16", "alpaca:train:16")
    _collect(model_folder, tmp_path / "extra", "contrast:train:24")
    train = ["train", str(tmp_path / "run"), "--top-k", "2", "--layers", "1-2"]
    res = runner.invoke(app, [*train, "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*train, "--gate-data", str(tmp_path / "extra"), "--out", str(tmp_path / "wide")])
    assert res.exit_code == 0, res.output
    plain, wide = (json.loads((tmp_path / b / "bundle.json").read_text()) for b in ("plain", "wide"))
    # the gate saw both collections' prompts, the energy models only the first
    assert wide["gate"]["metrics"]["data"]["collection"] == [str(tmp_path / "run"), str(tmp_path / "extra")]
    assert plain["gate"]["metrics"]["data"]["collection"] == str(tmp_path / "run")

    def rows(b):
        return sum(n for c in b["gate"]["metrics"]["data"]["counts"].values() for n in c.values())

    assert rows(wide) == rows(plain) + 24 and plain["gate"]["metrics"]["data"]["gate_only"] is None
    assert wide["gate"]["metrics"]["data"]["gate_only"]
    assert wide["data_summary"] == plain["data_summary"] and wide["layers"] == plain["layers"]
    a, b = (load_file(str(tmp_path / x / "energy.safetensors")) for x in ("plain", "wide"))
    energy = [k for k in a if k.startswith("layer.")]
    assert energy and all(torch.equal(a[k], b[k]) for k in energy)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("gate."))
    # test-split prompts may not reach the gate either, and gate data needs a gate
    _collect(model_folder, tmp_path / "test", "xstest:test:6")
    res = runner.invoke(app, [*train, "--gate-data", str(tmp_path / "test")])
    assert res.exit_code == 2 and "test-split" in res.output
    res = runner.invoke(app, [*train, "--gate-data", str(tmp_path / "extra"), "--no-harm-gate"])
    assert res.exit_code == 2 and "--no-harm-gate" in res.output


def test_gate_model_trains_the_gate_on_its_states_and_steers_with_it(tmp_path, model_folder):
    """`eds train --gate-model` reads the gate's states through another model of the same tokenizer; the
    bundle names it, and `eds generate` loads it by that name to gate every prompt."""
    from eds.models import load_model
    from eds.testing import random_bundle, tiny_model

    reader = tiny_model("qwen2", layers=4, hidden=48, seed=1)
    reader.model.save_pretrained(tmp_path / "reader")
    reader.tokenizer.save_pretrained(tmp_path / "reader")
    _collect(model_folder, tmp_path / "run", "advbench:train:16", "alpaca:train:16")
    train = [
        "train",
        str(tmp_path / "run"),
        "--top-k",
        "2",
        "--layers",
        "1-2",
        "--gate-model",
        str(tmp_path / "reader"),
    ]
    res = runner.invoke(app, [*train, "--gate-pool", "user", "--gate-layers", "3", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "b" / "bundle.json").read_text())
    gate = cfg["gate"]
    # layer 3 of the gate model: past the first steered layer (1) of the collections' model, which has 3
    assert cfg["format"] == "eds.bundle/3" and gate["layer"] == 3 and gate["reader"]["hidden_size"] == 48
    assert (
        gate["reader"]["name"] == str(tmp_path / "reader") and gate["metrics"]["states_read_by"]["dtype"] == "float32"
    )
    assert f"at layer 3 of {tmp_path / 'reader'}" in res.output.replace("\n", "")
    res = runner.invoke(app, [*train, "--out", str(tmp_path / "d")])  # default: the gate model's first half
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "d" / "bundle.json").read_text())["gate"]["layer"] in (0, 1, 2)
    gen = ["generate", "hello there", "--model", str(model_folder), "--max-new-tokens", "3", "--dtype", "float32"]
    res = runner.invoke(app, [*gen, "--bundle", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "states moved" in res.output
    res = runner.invoke(app, [*train, "--gate-layers", "4"])
    assert res.exit_code == 2 and "must lie in 0..3" in res.output
    res = runner.invoke(app, [*train, "--no-harm-gate"])
    assert res.exit_code == 2 and "--gate-model" in res.output
    # the gate model moved: the recorded name no longer loads, and --gate-model points at the new place
    from eds.bundle import _GATE_MODELS

    (tmp_path / "reader").rename(tmp_path / "moved")
    _GATE_MODELS.clear()  # the process would otherwise still hold the copy loaded from the old folder
    res = runner.invoke(app, [*gen, "--bundle", str(tmp_path / "b")])
    assert res.exit_code == 2 and "cannot be loaded by that name" in res.output.replace("\n", "")
    assert "--gate-model NAME_OR_FOLDER" in res.output.replace("\n", "")
    res = runner.invoke(app, [*gen, "--bundle", str(tmp_path / "b"), "--gate-model", str(tmp_path / "moved")])
    assert res.exit_code == 0 and "states moved" in res.output, res.output
    ev = ["eval", "--model", str(model_folder), "--dtype", "float32", "--set", "xstest:test:2", "--no-robustness"]
    ev += ["--capability", "none", "--max-new-tokens", "2", "--out", str(tmp_path / "ev")]
    res = runner.invoke(app, [*ev, "--bundle", str(tmp_path / "b")])  # fails before generating anything
    assert res.exit_code == 2 and not (tmp_path / "ev" / "records" / "refusal-base.jsonl").exists()
    assert "--gate-model NAME_OR_FOLDER" in res.output.replace("\n", "")
    _GATE_MODELS.clear()
    res = runner.invoke(app, [*ev, "--bundle", str(tmp_path / "b"), "--gate-model", str(tmp_path / "moved")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "result.json").read_text())["config"]["gate_model"] == str(tmp_path / "moved")
    res = runner.invoke(app, [*gen, "--gate-model", str(tmp_path / "moved")])
    assert res.exit_code == 2 and "give --bundle too" in res.output
    res = runner.invoke(app, [*gen, "--bundle", str(tmp_path / "b"), "--gate-model", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "cannot be loaded" in res.output
    random_bundle(load_model(str(model_folder), dtype="float32"), layers=(1,)).save(tmp_path / "own")
    res = runner.invoke(app, [*gen, "--bundle", str(tmp_path / "own"), "--gate-model", str(tmp_path / "moved")])
    assert res.exit_code == 2 and "no gate model to replace" in res.output


def test_mean_pooled_gate_trains_through_the_collections_model(tmp_path, model_folder, monkeypatch):
    _collect(model_folder, tmp_path / "run", "advbench:train:16", "alpaca:train:16")
    train = ["train", str(tmp_path / "run"), "--top-k", "2", "--layers", "1-2"]
    # no --dtype: the collections' (float32), whatever this CPU's default is
    res = runner.invoke(app, [*train, "--gate-pool", "mean", "--gate-layers", "0-1", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    gate = json.loads((tmp_path / "b" / "bundle.json").read_text())["gate"]
    assert gate["pool"] == "mean" and gate["layer"] in (0, 1)
    assert gate["metrics"]["states_read_by"]["dtype"] == "float32"
    assert "mean of the prompt" in res.output and "collections were made in" not in res.output
    res = runner.invoke(app, [*train, "--gate-pool", "mean", "--dtype", "bfloat16", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "reads states in bfloat16; the collections were made in float32" in res.output.replace("\n", " ")
    res = runner.invoke(app, [*train, "--gate-pool", "user", "--gate-layers", "1", "--out", str(tmp_path / "u")])
    assert res.exit_code == 0, res.output
    gate = json.loads((tmp_path / "u" / "bundle.json").read_text())["gate"]
    assert gate["pool"] == "user" and "mean of the user's text" in res.output
    from eds.models import load_model

    assert tuple(gate["span"]) == load_model(str(model_folder)).template_span()  # the collections' format
    res = runner.invoke(app, [*train, "--gate-pool", "mean", "--gate-layers", "2"])
    assert res.exit_code == 2 and "after the first steered layer" in res.output.replace("\n", "")
    res = runner.invoke(app, [*train, "--dtype", "float32", "--out", str(tmp_path / "d")])  # the last-token gate
    ignored = "--dtype serve --gate-pool mean/user and --gate-model only: ignored"
    assert res.exit_code == 0 and ignored in res.output.replace("\n", " ")
    res = runner.invoke(app, [*train, "--gate-pool", "max"])
    assert res.exit_code == 2 and "unknown gate pooling" in res.output
    from eds.bundle import SteerSettings
    from eds.collect import open_collections
    from eds.pipeline import make_bundle
    from eds.probe import train_probe
    from eds.train import TrainConfig

    col = open_collections([tmp_path / "run"])
    monkeypatch.setattr("eds.pipeline.train", lambda *a, **k: pytest.fail("trained before the check"))
    with pytest.raises(ValueError, match="pass the loaded model"):
        make_bundle(col, TrainConfig(layers=(1,)), SteerSettings(), gate_pool="mean", progress=False)
    with pytest.raises(ValueError, match="must lie in"):
        make_bundle(col, TrainConfig(layers=(1,)), SteerSettings(), gate_layers=[9], progress=False)
    with pytest.raises(ValueError, match="needs its states"):
        train_probe(col, [0], pool="mean")
    with pytest.raises(ValueError, match="how the given gate states were pooled"):
        train_probe(col, [0], states={0: col.states(0)[:, 0].float()})
