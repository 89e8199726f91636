import json

import pytest
import torch

from eds.evaluate import EvalError, evaluate_refusals, summarise
from eds.metrics import repeats_ngram
from eds.testing import random_bundle as make_bundle
from eds.testing import tiny_model


def test_summarise_and_repetition():
    recs = [
        {"group": "a", "label": "benign", "refused": True, "response": "I'm sorry."},
        {"group": "a", "label": "benign", "refused": False, "response": "go go go go go go go go go go go go"},
        {"group": "b", "label": "harmful", "refused": True, "response": "No."},
    ]
    res = summarise(recs).by_name()
    assert (res["a"].refused.k, res["a"].refused.n, res["a"].repetitive.k) == (1, 2, 1)
    assert res["b"].should_refuse and res["b"].to_dict()["compliance_rate"]["k"] == 0
    assert repeats_ngram("a b c d a b c d a b c d") and not repeats_ngram("a b c d a b c d")


def test_records_resume_only_under_the_same_settings(tmp_path, tiny):
    path = tmp_path / "r.jsonl"
    kw = dict(max_new_tokens=3, records_path=path, progress=False)
    first = evaluate_refusals(tiny, ["advbench:val:3"], **kw)
    lines = path.read_text().count("\n")
    again = evaluate_refusals(tiny, ["advbench:val:3"], **kw)  # nothing regenerated
    assert path.read_text().count("\n") == lines and again.records == first.records
    with pytest.raises(EvalError, match="max_new_tokens"):
        evaluate_refusals(tiny, ["advbench:val:3"], max_new_tokens=4, records_path=path, progress=False)
    with pytest.raises(EvalError, match="bundle"):
        evaluate_refusals(tiny, ["advbench:val:3"], bundle=make_bundle(tiny), **kw)
    with pytest.raises(EvalError, match="dtype"):
        evaluate_refusals(tiny_model("qwen2", dtype=torch.bfloat16), ["advbench:val:3"], **kw)
    # records from before the dtype was recorded were made in bf16, then the default
    side = path.with_name(path.name + ".settings.json")
    side.write_text(json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "dtype"}))
    with pytest.raises(EvalError, match="dtype"):
        evaluate_refusals(tiny, ["advbench:val:3"], **kw)


def test_records_notice_a_judge_whose_phrases_changed_under_the_same_name(tmp_path, tiny):
    from eds.judge import SubstringJudge

    path = tmp_path / "r.jsonl"
    kw = dict(max_new_tokens=3, records_path=path, progress=False)
    evaluate_refusals(tiny, ["advbench:val:3"], judge=SubstringJudge(), **kw)
    changed = SubstringJudge(phrases=("i cannot",))
    assert changed.name == "substring"
    with pytest.raises(EvalError, match="judge_digest"):
        evaluate_refusals(tiny, ["advbench:val:3"], judge=changed, **kw)
    # records written before judges were hashed hold only the name: they still resume
    side = tmp_path / "r.jsonl.settings.json"
    old = json.loads(side.read_text())
    del old["judge_digest"]
    side.write_text(json.dumps(old))
    assert len(evaluate_refusals(tiny, ["advbench:val:3"], judge=SubstringJudge(), **kw).records) == 3


def test_a_line_cut_by_a_crash_is_regenerated(tmp_path, tiny):
    path = tmp_path / "r.jsonl"
    kw = dict(max_new_tokens=3, records_path=path, progress=False)
    evaluate_refusals(tiny, ["advbench:val:3"], **kw)
    text = path.read_text()
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 1] + text.splitlines()[-1][:20])  # cut last line
    res = evaluate_refusals(tiny, ["advbench:val:3"], **kw)
    assert len(res.records) == 3
    rows = [
        json.loads(line)
        for line in path.read_text().splitlines()[: -0 or None]
        if line.startswith("{") and line.endswith("}")
    ]
    assert len({r["key"] for r in rows}) == 3


def test_groups_are_per_source_label_and_template_family():
    from eds.data import Prompt
    from eds.evaluate import _group_name

    wrapped = Prompt("jbb-1@aim", "...", "harmful", "gptfuzzer", "gptfuzzer/aim", "test")
    assert _group_name(wrapped, "jb:gptfuzzer:jailbreakbench:test:50") == "gptfuzzer"
    assert _group_name(Prompt("p1", "...", "harmful", "past-tense"), "tense:past:test:50") == "past-tense"
    assert _group_name(Prompt("x1", "...", "benign", "xstest"), "xstest:test") == "xstest_benign"
    assert _group_name(Prompt("o1", "...", "benign", "orbench_hard"), "orbench_hard:test:150") == "orbench_hard"


def test_a_set_with_both_labels_is_reported_per_label():
    from eds.evaluate import summarise

    rec = dict(dataset="contrast", category="", prompt="p", response="Sure, here it is.")
    records = [
        {**rec, "key": "a", "group": "contrast", "label": "benign", "refused": True},
        {**rec, "key": "b", "group": "contrast", "label": "benign", "refused": False},
        {**rec, "key": "c", "group": "contrast", "label": "harmful", "refused": True},
        {**rec, "key": "d", "group": "orbench_hard", "label": "benign", "refused": False},
    ]
    res = {d.name: d for d in summarise(records).datasets}
    assert sorted(res) == ["contrast_benign", "contrast_harmful", "orbench_hard"]
    assert res["contrast_benign"].refused.k == 1 and res["contrast_benign"].refused.n == 2
    assert res["contrast_harmful"].should_refuse and not res["contrast_benign"].should_refuse
