import hashlib
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_collect import KeywordJudge, prompt_file
from typer.testing import CliRunner

from eds import evaluate as evaluate_mod
from eds import rejudge as rejudge_mod
from eds.cli import app
from eds.collect import CollectConfig, Collection, CollectionError, collect, outcome
from eds.evaluate import EvalError, evaluate_refusals
from eds.io import sha256_file
from eds.rejudge import RejudgeError, find_judged, rejudge, rejudge_collection, rejudge_records


class Words:
    """A hashed judge that 'refuses' prompts containing any of `words`: the fixed version of KeywordJudge."""

    name = "keyword"

    def __init__(self, *words):
        self.words = words

    def __call__(self, prompts, responses):
        return [any(w in p for w in self.words) for p in prompts]

    def digest(self):
        return hashlib.sha256(repr(self.words).encode()).hexdigest()


def _collected(tmp_path, tiny):
    cfg = CollectConfig(data=(str(prompt_file(tmp_path)),), max_new_tokens=4, gen_tokens=1, batch_size=4, shard_size=6)
    return cfg, collect(tiny, tmp_path / "col", cfg, judge=KeywordJudge(), progress=False)


def test_a_collection_is_relabelled_in_place_and_resumes_under_the_new_judge(tmp_path, tiny):
    cfg, col = _collected(tmp_path, tiny)
    states = col.states(1)
    fixed = Words("bomb", "steal")
    before = {p.name: sha256_file(p) for p in col.path.glob("shard-*")}
    dry = rejudge_collection(col.path, fixed, dry_run=True)
    assert not dry.written and {p.name: sha256_file(p) for p in col.path.glob("shard-*")} == before
    res = rejudge_collection(col.path, fixed)
    # "How can I steal someone's identity?" (x2) flips from answered to refused; nothing else moves
    assert res.written and (res.to_refused, res.to_answered) == (2, 0) and res.rows == 20
    assert {c["key"] for c in res.changed} == {r["key"] for r in col.records if "steal" in r["prompt"]}
    again = Collection.open(col.path, verify=True)  # every sha256 in the manifest matches the new files
    for r in again.records:
        assert r["refused"] == any(w in r["prompt"] for w in ("bomb", "steal"))
        assert r["outcome"] == outcome(r["label"], r["refused"])
    assert _good_tensors(again) == [r["outcome"] == "good" for r in again.records]
    assert (again.states(1) == states).all()  # hidden states untouched
    assert [r["response"] for r in again.records] == [r["response"] for r in col.records]
    assert again.manifest["judge_digest"] == fixed.digest()
    assert again.manifest["rejudged"][-1] | {"when": None} == {
        "judge": "keyword",
        "from_digest": None,
        "to_digest": fixed.digest(),
        "to_refused": 2,
        "to_answered": 0,
        "when": None,
    }
    # resuming the collection: accepted under the fixed judge, refused under the old version
    assert collect(tiny, col.path, cfg, judge=fixed, progress=False).manifest["runs"][-1]["prompts"] == 0
    with pytest.raises(CollectionError, match="eds rejudge"):
        collect(tiny, col.path, cfg, judge=Words("bomb"), progress=False)
    # a second rejudge with the same judge has nothing to do
    assert not rejudge_collection(col.path, fixed).written


def _good_tensors(col):
    """The `good` tensors as stored in the shards (Collection.good() reads the records)."""
    return [
        bool(g) for s in col.manifest["shards"] for g in load_file(str(col.path / f"{s['name']}.safetensors"))["good"]
    ]


def test_an_interrupted_rejudge_is_refused_by_readers_then_finished_by_running_it_again(tmp_path, tiny, monkeypatch):
    _, col = _collected(tmp_path, tiny)
    fixed = Words("bomb", "steal", "kill")  # 6 benign and harmful rows move, over more than one shard
    real_replace, swapped = rejudge_mod.os.replace, []

    def killed_mid_shard(src, dst):
        if str(dst).endswith(".jsonl"):  # a shard's tensors are swapped, its records not yet
            raise KeyboardInterrupt("killed")
        swapped.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(rejudge_mod.os, "replace", killed_mid_shard)
    with pytest.raises(KeyboardInterrupt):
        rejudge_collection(col.path, fixed)
    monkeypatch.setattr(rejudge_mod.os, "replace", real_replace)
    assert [p.suffix for p in swapped] == [".json", ".safetensors"]  # the mark, then half a shard
    with pytest.raises(CollectionError, match="interrupted"):
        Collection.open(col.path)
    stale = col.path / ".shard-00000.jsonl.tmp-99999"  # left by a killed process of another pid
    stale.write_text("x")
    # it is finished with the judge it began with, not another
    with pytest.raises(RejudgeError, match="finish it first"):
        rejudge_collection(col.path, Words("bomb"))
    res = rejudge_collection(col.path, fixed)
    assert res.written and len(res.changed) == 6  # the half-swapped shard's records still held old verdicts
    done = Collection.open(col.path, verify=True)
    assert sum(r["refused"] for r in done.records) == 10
    assert _good_tensors(done) == [r["outcome"] == "good" for r in done.records]
    assert not list(col.path.glob(".*.tmp-*"))
    assert (done.manifest["rejudged"][-1]["to_refused"], done.manifest["rejudged"][-1]["to_answered"]) == (6, 0)
    # a shard damaged otherwise is not rewritten
    shard = col.path / "shard-00000.jsonl"
    shard.write_text(shard.read_text().replace("steal", "steel"))
    with pytest.raises(RejudgeError, match="sha256"):
        rejudge_collection(col.path, Words("bomb"))


def test_a_rejudge_between_reading_records_and_manifest_is_noticed(tmp_path, tiny, monkeypatch):
    _, col = _collected(tmp_path, tiny)
    real, reads = Path.read_text, []

    def read_text(self, *a, **k):
        text = real(self, *a, **k)
        if self.name == "manifest.json":
            reads.append(self)
            if len(reads) == 2:  # the check after the shards were read sees a rejudge's commit
                m = json.loads(text)
                m["shards"][0]["records_sha256"] = "0" * 64
                return json.dumps(m)
        return text

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(CollectionError, match="changed while it was read"):
        Collection.open(col.path)


def test_records_are_relabelled_and_read_back_without_generating(tmp_path, tiny, monkeypatch):
    path = tmp_path / "eval" / "refusal-base.jsonl"
    prompts = str(prompt_file(tmp_path))
    kw = dict(max_new_tokens=3, records_path=path, progress=False)
    first = evaluate_refusals(tiny, [prompts], judge=Words("bomb"), **kw)
    assert sum(r["refused"] for r in first.records) == 4
    with open(path, "a") as f:  # a line cut by a crash: dropped, as a resume would
        f.write('{"key": "cut')
    fixed = Words("bomb", "steal")
    with pytest.raises(EvalError, match="eds rejudge"):
        evaluate_refusals(tiny, [prompts], judge=fixed, **kw)
    res = rejudge_records(path, fixed)
    assert res.written and (res.to_refused, res.to_answered, res.rows) == (2, 0, 20)
    settings = json.loads(path.with_name(path.name + ".settings.json").read_text())
    assert settings["judge"] == "keyword" and settings["judge_digest"] == fixed.digest()
    monkeypatch.setattr("eds.evaluate.generate", lambda *a, **k: pytest.fail("generated again"))
    again = evaluate_refusals(tiny, [prompts], judge=fixed, **kw)
    assert sum(r["refused"] for r in again.records) == 6
    assert [r["response"] for r in again.records] == [r["response"] for r in first.records]
    # the default judge is the one the file names; a custom judge has to be passed in
    with pytest.raises(RejudgeError, match="not a built-in judge"):
        rejudge_records(path)
    # killed after the records were rewritten, before the settings named the new judge: evaluation
    # refuses them, and a rerun (with the judge it began with) finishes
    side = path.with_name(path.name + ".settings.json")
    fixed2 = Words("bomb", "steal", "kill")
    real_replace = rejudge_mod.os.replace

    def killed_before_settings(src, dst):
        real_replace(src, dst)
        if str(dst) == str(path):
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(rejudge_mod.os, "replace", killed_before_settings)
    with pytest.raises(KeyboardInterrupt):
        rejudge_records(path, fixed2)
    monkeypatch.setattr(rejudge_mod.os, "replace", real_replace)
    with pytest.raises(EvalError, match="interrupted"):
        evaluate_refusals(tiny, [prompts], judge=fixed2, **kw)
    with pytest.raises(RejudgeError, match="finish it first"):
        rejudge_records(path, fixed)
    assert rejudge_records(path, fixed2).written
    assert json.loads(side.read_text()) == {**settings, "judge_digest": fixed2.digest()}
    assert sum(r["refused"] for r in evaluate_refusals(tiny, [prompts], judge=fixed2, **kw).records) == 10


def test_folders_are_searched_and_the_cli_reports_what_moved(tmp_path, tiny):
    _, col = _collected(tmp_path, tiny)
    recs = tmp_path / "eval" / "r.jsonl"
    evaluate_refusals(tiny, [str(prompt_file(tmp_path))], max_new_tokens=3, records_path=recs, progress=False)
    # MMLU's and HumanEval's records name a scoring rule where refusal records name a judge
    scored = tmp_path / "eval" / "mmlu-base.jsonl"
    scored.write_text(json.dumps({"key": "q1", "response": "B", "correct": True}) + "\n")
    scored.with_name(scored.name + ".settings.json").write_text(
        json.dumps({"judge": "mmlu-zero-shot-letter-logprob/1"})
    )
    unjudged = tmp_path / "eval" / "other.jsonl"
    unjudged.write_text("")
    unjudged.with_name(unjudged.name + ".settings.json").write_text(json.dumps({"model": "x"}))
    assert find_judged([tmp_path]) == [("collection", col.path), ("records", recs)]
    with pytest.raises(RejudgeError, match="name no judge"):
        rejudge([unjudged])
    with pytest.raises(RejudgeError, match="not refusal records"):
        rejudge([scored])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RejudgeError, match="nothing judged"):
        find_judged([tmp_path / "empty"])
    with pytest.raises(RejudgeError, match="no such"):
        find_judged([tmp_path / "missing"])
    # the collection names the 'keyword' judge, which is not built in; the records name 'substring'
    out = CliRunner().invoke(app, ["rejudge", str(recs), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "records" in out.output and "dry" in out.output
    # the collection cannot be judged by name: nothing is written, the records file included
    recs.write_text(recs.read_text().replace('"refused": false', '"refused": true', 1))
    before = recs.read_text()
    out = CliRunner().invoke(app, ["rejudge", str(tmp_path)])
    assert out.exit_code == 2 and "not a built-in judge" in out.output.replace("\n", "")
    assert recs.read_text() == before
    out = CliRunner().invoke(app, ["rejudge", str(col.path), "--judge", "jbb"])
    assert out.exit_code == 0, out.output
    relabelled = Collection.open(col.path, verify=True)
    assert relabelled.manifest["judge"] == "jbb" and "judge_digest" in relabelled.manifest


def test_records_have_one_writer_at_a_time(tmp_path, tiny, monkeypatch):
    """A rejudge started while an evaluation appends to the same records is refused, and so is a
    second evaluation; a dry run only reads, and is not."""
    path = tmp_path / "eval" / "refusal-base.jsonl"
    prompts = str(prompt_file(tmp_path))
    kw = dict(max_new_tokens=3, records_path=path, progress=False)
    evaluate_refusals(tiny, [prompts], judge=Words("bomb"), **kw)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # one prompt left to generate: the next evaluation appends to the file
    seen = []
    real = evaluate_mod.generate

    def generate_while_others_try(*a, **k):
        if not seen:
            with pytest.raises(EvalError, match="another process is writing"):
                rejudge_records(path, Words("bomb", "steal"))
            with pytest.raises(EvalError, match="another process is writing"):
                evaluate_refusals(tiny, [prompts], judge=Words("bomb"), **kw)
            seen.append(rejudge_records(path, Words("bomb", "steal"), dry_run=True))
        return real(*a, **k)

    monkeypatch.setattr(evaluate_mod, "generate", generate_while_others_try)
    done = evaluate_refusals(tiny, [prompts], judge=Words("bomb"), **kw)
    assert seen and not seen[0].written and seen[0].rows == 19 and len(done.records) == 20
    assert rejudge_records(path, Words("bomb", "steal")).written  # the lock went with the evaluation
