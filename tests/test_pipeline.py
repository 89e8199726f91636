import json
from dataclasses import replace

import pytest

from eds import pipeline
from eds.collect import Collection
from eds.pipeline import RunConfig, run
from eds.train import labels_digest


class Retrained(Exception):
    """Raised where the main job would train its bundle."""


def retrain(*a, **k):
    raise Retrained


def test_main_job_end_to_end_on_a_tiny_model(tmp_path, tiny, monkeypatch):
    cfg = RunConfig(
        out=str(tmp_path / "run"),
        collect_limit=40,
        etas=(0.05, 0.2),
        max_new_tokens=4,
        val_sets=("orbench_hard:val:6", "advbench:val:6"),
        test_sets=("xstest:test:8",),
        route=False,  # the tiny model never refuses: no refused harmful rows to train refuse models on
    )
    res = run(cfg, lm=tiny)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(report["tuning"]) == 2 and report["chosen"] == res.chosen
    # the main job steers the first 4 generated tokens and measures each candidate's code drift
    tuning = report["tuning"]
    assert {r["setting"]["positions"] for r in tuning} == {4} and all("drift_kl" in r for r in tuning)
    assert json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())["steering"]["positions"] == 4
    ev = json.loads((tmp_path / "run" / "eval" / "result.json").read_text())
    assert ev["model"]["name"] == "tiny-qwen2" and ev["bundle"]["layers"]
    datasets = {d["dataset"] for d in ev["sections"]["refusal"]["steered"]["datasets"]}
    assert datasets <= {"xstest_benign", "xstest_harmful"}
    assert sum(d["n"] for d in ev["sections"]["refusal"]["steered"]["datasets"]) == 8
    assert (tmp_path / "run" / "bundle" / "auroc_by_layer.png").exists()
    assert (tmp_path / "run" / "tune" / "tradeoff.png").exists()
    # the gate also learned the gate-only prompts, which the energy models never saw
    bundle = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert bundle["gate"]["metrics"]["data"]["collection"] == [
        str(tmp_path / "run" / d) for d in ("collect", "collect-gate")
    ]
    assert bundle["data_summary"]["collection"] == str(tmp_path / "run" / "collect")
    assert bundle["data_summary"]["model_dtypes"] == ["float32"]  # what the states were read in
    # a second run reuses every stage: same choice, nothing regenerated, the bundle not retrained
    lines = (tmp_path / "run" / "tune" / "base.jsonl").read_text().count("\n")
    monkeypatch.setattr(pipeline, "make_bundle", lambda *a, **k: pytest.fail("the bundle was retrained"))
    again = run(cfg, lm=tiny)
    assert again.chosen == res.chosen
    assert (tmp_path / "run" / "tune" / "base.jsonl").read_text().count("\n") == lines
    # gate thresholds tried on val come from the bundle as trained (no retraining), one candidate each
    gated = run(replace(cfg, etas=(0.05,), gate_recalls=(0.9, 0.99)), lm=tiny)
    assert sorted(r["setting"]["gate_recall"] for r in gated.tuning) == [0.9, 0.99]
    assert (tmp_path / "run" / "tune" / "base.jsonl").read_text().count("\n") == lines

    # ... but a gate that should not (or should differently) learn the gate-only prompts is retrained
    monkeypatch.setattr(pipeline, "make_bundle", retrain)
    with pytest.raises(Retrained):
        run(replace(cfg, gate_data=()), lm=tiny)
    with pytest.raises(Retrained):  # a gate that reads the user's text, or from other layers
        run(replace(cfg, gate_pool="user"), lm=tiny)
    with pytest.raises(Retrained):
        run(replace(cfg, gate_layers=(9,)), lm=tiny)
    with pytest.raises(ValueError, match="unknown gate pooling"):
        run(replace(cfg, gate_pool="max", out=str(tmp_path / "none")), lm=tiny)
    assert not (tmp_path / "none" / "collect").exists()  # refused before collecting
    # ... and so is a bundle whose collection was relabelled (`eds rejudge`) since it was trained
    monkeypatch.setattr(pipeline, "make_bundle", lambda *a, **k: pytest.fail("the bundle was retrained"))
    run(cfg, lm=tiny)  # the gate-data run above raised before saving: the bundle on disk is still current
    path = tmp_path / "run" / "bundle" / "bundle.json"
    saved = json.loads(path.read_text())
    assert saved["data_summary"]["labels"] == labels_digest(Collection.open(tmp_path / "run" / "collect").records)
    saved["data_summary"]["labels"] = "0" * 16  # labels that moved
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(pipeline, "make_bundle", retrain)
    with pytest.raises(Retrained):
        run(cfg, lm=tiny)
    # a bundle from before labels were hashed is reused, unless its collection has been relabelled since
    del saved["data_summary"]["labels"]
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(pipeline, "make_bundle", lambda *a, **k: pytest.fail("the bundle was retrained"))
    run(cfg, lm=tiny)
    manifest = tmp_path / "run" / "collect" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "rejudged": [{}]}))
    monkeypatch.setattr(pipeline, "make_bundle", retrain)
    with pytest.raises(Retrained):
        run(cfg, lm=tiny)


class Stop(Exception):
    """Raised where the main job would start its tune."""


@pytest.fixture
def tune_calls(monkeypatch):
    """The main job stops at its tune; the list gets each call's (bundle, TuneConfig)."""
    import eds.tune

    seen = []

    def fake_tune(lm, bundle, cfg, **kw):
        seen.append((bundle, cfg))
        raise Stop

    monkeypatch.setattr(eds.tune, "tune", fake_tune)
    return seen


def test_main_job_passes_gate_options_to_the_tune(tmp_path, tiny, tune_calls):
    """Tried gate thresholds reach the tune as given; none given: the bundle's own threshold."""
    cfg = RunConfig(out=str(tmp_path / "run"), collect_limit=40, gate_data=(), route=False, max_new_tokens=2)
    with pytest.raises(Stop):
        run(cfg, lm=tiny)
    assert tune_calls[-1][1].gate_recall == (None,) and tune_calls[-1][1].route_recall == (None,)
    with pytest.raises(Stop):
        run(replace(cfg, gate_recalls=(0.97, 0.99)), lm=tiny)
    assert tune_calls[-1][1].gate_recall == (0.97, 0.99) and tune_calls[-1][1].route_recall == (None,)


def test_main_job_trains_and_reuses_a_gate_model(tmp_path, tiny, monkeypatch, tune_calls):
    """`eds run --gate-model`: the gate reads the gate model's states; a rerun reuses the bundle and the
    loaded gate model; without the option the bundle is retrained."""
    from eds.models import load_model
    from eds.testing import tiny_model

    for name, lm in (("steered", tiny), ("reader", tiny_model("qwen2", layers=4, hidden=48, seed=1))):
        lm.model.save_pretrained(tmp_path / name)  # both loaded alike: the same tokenizer class
        lm.tokenizer.save_pretrained(tmp_path / name)
    steered = load_model(str(tmp_path / "steered"), dtype="float32")
    cfg = RunConfig(
        out=str(tmp_path / "run"), collect_limit=40, gate_data=(), route=False, gate_model=str(tmp_path / "reader")
    )
    with pytest.raises(Stop):
        run(cfg, lm=steered)
    bundle = tune_calls[-1][0]
    assert bundle.gate_reader.hidden_size == 48 and bundle.gate_model.name == str(tmp_path / "reader")
    assert bundle.gate_metrics["states_read_by"]["model"] == str(tmp_path / "reader")
    monkeypatch.setattr(pipeline, "make_bundle", lambda *a, **k: pytest.fail("the bundle was retrained"))
    with pytest.raises(Stop):
        run(cfg, lm=steered)
    again = tune_calls[-1][0]
    assert again.gate_reader == bundle.gate_reader and again.gate_model is bundle.gate_model  # not reloaded
    monkeypatch.setattr(pipeline, "make_bundle", retrain)
    with pytest.raises(Retrained):
        run(replace(cfg, gate_model=None), lm=steered)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"harm_gate": False, "route": False, "gate_recalls": (0.9,)}, "need the harm gate"),
        ({"harm_gate": False, "route": False, "gate_model": "any"}, "need the harm gate"),
        ({"route": False, "route_recalls": (None, 0.9)}, "needs --route"),
        ({"gate_recalls": (0.93,)}, r"no gate threshold is stored for recall \[0.93\]"),
        ({"route_recalls": (0.9, 0.91)}, r"recall \[0.91\]"),
    ],
)
def test_main_job_refuses_gate_options_before_collecting(tmp_path, tiny, options, message):
    cfg = replace(RunConfig(out=str(tmp_path / "run")), **options)
    with pytest.raises(ValueError, match=message):
        run(cfg, lm=tiny)
    assert not (tmp_path / "run" / "collect").exists()
