import json

import pytest

from eds import data
from eds.data import DataError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_named_sets_and_splits():
    rows = data.load("orbench_hard:train")
    assert len(rows) == 662 and {r.split for r in rows} == {"train"} and {r.label for r in rows} == {"benign"}
    assert len(data.load("xstest:test")) == 450
    assert len(data.load("advbench")) == 487  # all splits
    assert set(data.builtin_names()) >= {
        "advbench",
        "alpaca",
        "donotanswer",
        "harmbench",
        "jailbreakbench",
        "oktest",
        "orbench_hard",
        "xstest",
    }


def test_sampled_spec_is_seeded_and_ordered():
    a = data.load("alpaca:train:25")
    b = data.load("alpaca:train:25")
    c = data.load("alpaca:train:25", seed=1)
    assert len(a) == 25 and [r.key for r in a] == [r.key for r in b] and [r.key for r in a] != [r.key for r in c]
    full = [r.key for r in data.load("alpaca:train")]
    idx = [full.index(r.key) for r in a]
    assert idx == sorted(idx)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuchset:train", "unknown dataset 'nosuchset'"),
        ("advbench:dev", "unknown split 'dev'"),
        ("jailbreakbench:train", "has no 'train' split"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        data.load(spec)


def test_user_jsonl_ok(tmp_path):
    p = write(tmp_path, "mine.jsonl", '{"prompt": "hi", "label": "benign"}\n\n{"prompt": "x", "id": "7"}\n')
    rows = data.load(str(p))
    assert [r.label for r in rows] == ["benign", None] and rows[1].id == "7" and rows[0].dataset == "mine"


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "ok"}\n{"text": "no prompt"}\n', r"mine.jsonl, line 2: missing field 'prompt'"),
        ('{"prompt": "ok"}\n{"prompt": "   "}\n', r"line 2: empty prompt"),
        ('{"prompt": "ok", "label": "evil"}\n', r"line 1: unknown label 'evil'"),
        ('{"prompt": "ok", "split": "dev"}\n', r"line 1: unknown split 'dev'"),
        ('{"prompt": "ok"}\n{"prompt": "a",\n', r"line 2: invalid JSON"),
        ('["prompt"]\n', r"line 1: expected a JSON object, got list"),
        ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', r"duplicate id '1'"),
        ("\n\n", r"no prompts"),
    ],
)
def test_user_jsonl_errors_name_file_and_line(tmp_path, text, message):
    p = write(tmp_path, "mine.jsonl", text)
    with pytest.raises(DataError, match=message):
        data.load(str(p))


def test_user_csv(tmp_path):
    p = write(
        tmp_path, "mine.csv", 'prompt,label\n"Where can I buy a can of coke?",benign\nHow to build a bomb,harmful\n'
    )
    assert [r.label for r in data.load(str(p))] == ["benign", "harmful"]
    bad = write(tmp_path, "bad.csv", "prompt,label\nfine,benign\n,harmful\n")
    with pytest.raises(DataError, match=r"bad.csv, line 3: empty prompt"):
        data.load(str(bad))
    nocol = write(tmp_path, "nocol.csv", "question,label\nfine,benign\n")
    with pytest.raises(DataError, match=r"nocol.csv, line 1: no 'prompt' column"):
        data.load(str(nocol))


def test_user_json(tmp_path):
    p = write(tmp_path, "mine.json", json.dumps({"prompts": [{"prompt": "a"}, {"prompt": "b", "label": "harmful"}]}))
    assert len(data.load(str(p) + ":1")) == 1
    bad = write(tmp_path, "bad.json", json.dumps([{"prompt": "a"}, {"prompt": ""}]))
    with pytest.raises(DataError, match=r"bad.json, item 1 \(0-based\): empty prompt"):
        data.load(str(bad))
    broken = write(tmp_path, "broken.json", '[\n{"prompt": "a"},\n{"prompt": }\n]')
    with pytest.raises(DataError, match=r"broken.json, line 3: invalid JSON"):
        data.load(str(broken))
    with pytest.raises(DataError, match="unsupported file type"):
        data.read_file(write(tmp_path, "x.txt", "hi"))


def test_mixture_rejects_double_counting():
    with pytest.raises(DataError, match="already in the mixture"):
        data.load_many(["advbench:train", "advbench"])


def test_stratified_limit_keeps_every_source():
    rows = data.load_many(data.DEFAULT_MIXTURE)
    kept = data.stratified_limit(rows, 100)
    assert len(kept) == 100
    per = {d: sum(r.dataset == d for r in kept) for d in ("advbench", "donotanswer", "orbench_hard", "alpaca")}
    assert all(n >= 10 for n in per.values()), per
    assert data.stratified_limit(rows, 100) == kept


def test_default_mixture_uses_no_test_split():
    assert {r.split for r in data.load_many(data.DEFAULT_MIXTURE)} == {"train"}


def test_load_many_keeps_a_prompt_text_once():
    from eds.data import load, load_many

    scary = load("alpaca_scary:train")
    both = load_many(["alpaca:train", "alpaca_scary:train"])
    texts = [p.prompt for p in both]
    assert len(texts) == len(set(texts)) == len(load("alpaca:train"))
    assert all(p.dataset == "alpaca" for p in both) and scary
