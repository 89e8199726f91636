import json

import pytest

from eds.evaluate import DatasetResult, EvalResult
from eds.metrics import Rate
from eds.pipeline import RunConfig, choose_eta, run


def result(**refusals):
    return EvalResult([DatasetResult(name, label, Rate(k, 100), Rate(0, 100)) for name, (label, k) in refusals.items()])


def test_choose_eta_keeps_safety_first():
    base = result(orb=("benign", 40), adv=("harmful", 80), hb=("harmful", 50))
    runs = {
        0.03: result(orb=("benign", 20), adv=("harmful", 85), hb=("harmful", 50)),  # feasible, 80% compliance
        0.06: result(orb=("benign", 10), adv=("harmful", 90), hb=("harmful", 49)),  # feasible (-1 pt), 90%
        0.10: result(orb=("benign", 2), adv=("harmful", 95), hb=("harmful", 40)),  # loses 10 pts on hb
    }
    chosen, rows = choose_eta(base, runs, margin=0.01)
    assert chosen == 0.06
    assert [r["feasible"] for r in rows] == [True, True, False]
    assert rows[2]["max_harmful_refusal_drop"] == pytest.approx(0.10) and rows[0]["benign_compliance"] == 0.8
    assert choose_eta(base, {0.1: runs[0.1]}, margin=0.01)[0] is None


def test_main_job_end_to_end_on_a_tiny_model(tmp_path, tiny):
    cfg = RunConfig(
        out=str(tmp_path / "run"),
        collect_limit=40,
        etas=(0.05, 0.2),
        max_new_tokens=4,
        val_sets=("orbench_hard:val:6", "advbench:val:6"),
        test_sets=("xstest:test:8",),
    )
    res = run(cfg, lm=tiny)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["fingerprint"]["name"] == "tiny-qwen2" and len(report["tuning"]) == 2
    assert {t["base"]["dataset"] for t in report["test"]} <= {"xstest_benign", "xstest_harmful"}
    assert res.test_steered is not None and len(res.test_steered.records) == 8
    assert (tmp_path / "run" / "bundle" / "auroc_by_layer.png").exists()
    # a second run reuses every stage: same chosen eta, nothing regenerated
    lines = (tmp_path / "run" / "eval" / "val-base.jsonl").read_text().count("\n")
    again = run(cfg, lm=tiny)
    assert again.chosen_eta == res.chosen_eta
    assert (tmp_path / "run" / "eval" / "val-base.jsonl").read_text().count("\n") == lines
