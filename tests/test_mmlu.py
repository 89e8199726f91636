import json
import random

import pytest
import torch

from eds.evaluate import EvalError
from eds.mmlu import (
    MMLU_QUESTIONS,
    MMLU_SUBJECTS,
    MMLUError,
    Question,
    evaluate_mmlu,
    format_prompt,
    letter_token_ids,
    load_questions,
    read_questions,
    score_letters,
    stratified_subset,
)
from eds.testing import random_bundle, tiny_model

HEADER = {
    "question": "question",
    "answer_a": "answer_a",
    "answer_b": "answer_b",
    "answer_c": "answer_c",
    "answer_d": "answer_d",
    "correct_answer": "answer",
}


def row(i: int, subject: str, answer: str = "A") -> dict:
    return {
        "question": f"What is {i} + {i}?",
        "answer_a": str(2 * i),
        "answer_b": str(2 * i + 1),
        "answer_c": str(i),
        "answer_d": "none",
        "correct_answer": answer,
        "topic": subject,
    }


def write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def synthetic(n_subjects: int = 3, per: int = 7) -> list[Question]:
    qs = []
    for s in range(n_subjects):
        for i in range(per + s):  # subjects of different sizes
            qs.append(
                Question(f"mmlu-{len(qs) + 1:05d}", f"subject {s}", f"Q{s}.{i}?", ("w", "x", "y", "z"), i % 4, len(qs))
            )
    return qs


def test_header_rows_are_dropped_and_counts_checked(tmp_path):
    p = tmp_path / "mmlu.jsonl"
    rows = [row(1, "algebra", "B"), {**HEADER, "topic": "algebra"}, row(2, "law", "D"), {**HEADER, "topic": "law"}]
    write(p, rows)
    qs = read_questions(p, expect_questions=2, expect_subjects=2)
    assert [(q.subject, q.answer, q.line) for q in qs] == [("algebra", 1, 1), ("law", 3, 3)]
    assert qs[0].choices == ("2", "3", "1", "none") and qs[0].key != qs[1].key
    with pytest.raises(MMLUError, match=r"mmlu.jsonl: 2 questions after dropping header rows, expected 14042"):
        read_questions(p, expect_questions=MMLU_QUESTIONS)
    with pytest.raises(MMLUError, match="2 subjects, expected 57"):
        read_questions(p, expect_subjects=MMLU_SUBJECTS)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps(row(3, "law", "E")), "correct_answer must be one of A-D"),
        (json.dumps({k: v for k, v in row(3, "law").items() if k != "answer_c"}), "answer_c"),
        (json.dumps(["a list"]), "expected a JSON object"),
    ],
)
def test_a_bad_row_names_file_and_line(tmp_path, bad, message):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(row(1, "law")) + "\n\n" + bad + "\n")
    with pytest.raises(MMLUError, match=rf"m\.jsonl, line 3: .*{message}"):
        read_questions(p)


def test_stratified_subset_is_fixed_stratified_and_nested():
    qs = synthetic()
    a, b = stratified_subset(qs, 3, seed=0), stratified_subset(qs, 3, seed=0)
    assert a == b
    shuffled = qs[:]
    random.Random(1).shuffle(shuffled)
    assert {q.key for q in stratified_subset(shuffled, 3)} == {q.key for q in a}  # file order does not matter
    counts: dict[str, int] = {}
    for q in a:
        counts[q.subject] = counts.get(q.subject, 0) + 1
    assert counts == {"subject 0": 3, "subject 1": 3, "subject 2": 3}
    assert {q.key for q in stratified_subset(qs, 2)} < {q.key for q in a}  # a larger subset holds a smaller one
    assert {q.key for q in stratified_subset(qs, 3, seed=1)} != {q.key for q in a}
    assert stratified_subset(qs, 100) == qs and stratified_subset(qs, None) == qs
    assert [q.key for q in a] == [q.key for q in qs if q in a]  # original order kept
    with pytest.raises(MMLUError):
        stratified_subset(qs, 0)


def test_letter_tokens_are_single_distinct_tokens(tiny):
    ids = letter_token_ids(tiny.tokenizer)
    assert len(ids) == 4 and all(len(v) >= 1 for v in ids)
    for letter, v in zip("ABCD", ids, strict=True):
        for t in v:
            assert tiny.tokenizer.decode([t]).strip() == letter
    assert len({t for v in ids for t in v}) == sum(len(v) for v in ids)


def test_scores_are_the_letter_logprobs_at_the_first_assistant_position(tiny):
    qs = synthetic(1, 3)
    prompts = [format_prompt(q) for q in qs]
    logp, moved = score_letters(tiny, prompts)
    enc = tiny.encode(prompts)
    with torch.no_grad():
        full = torch.log_softmax(tiny.model(**enc).logits[:, -1].float(), -1)
    ids = letter_token_ids(tiny.tokenizer)
    want = torch.stack([torch.logsumexp(full[:, v], -1) for v in ids], -1)
    assert torch.allclose(logp, want, atol=1e-5) and moved == [0, 0, 0]
    assert "A. w\nB. x\nC. y\nD. z" in prompts[0] and "about subject 0" in prompts[0]


def test_prediction_is_the_letter_with_the_highest_logprob():
    lm = tiny_model("qwen2", seed=1)
    c = letter_token_ids(lm.tokenizer)[2][0]

    def favour_c(module, args, out):
        out = out.clone()
        out[..., c] += 50.0
        return out

    qs = synthetic(2, 4)
    handle = lm.model.lm_head.register_forward_hook(favour_c)
    try:
        res = evaluate_mmlu(lm, questions=qs, per_subject=None, batch_size=3, progress=False)
    finally:
        handle.remove()
    assert {r["pred"] for r in res.records} == {"C"}
    assert all(max(range(4), key=r["logprobs"].__getitem__) == 2 for r in res.records)
    assert res.accuracy.k == sum(q.answer == 2 for q in qs) and res.n == len(qs)
    assert set(res.by_subject) == {"subject 0", "subject 1"}
    assert sum(r.n for r in res.by_subject.values()) == len(qs)


def test_records_resume_and_steering_changes_scores(tmp_path, tiny):
    qs = synthetic(2, 5)
    path = tmp_path / "base.jsonl"
    kw = dict(questions=qs, per_subject=3, batch_size=4, progress=False)
    base = evaluate_mmlu(tiny, records=path, **kw)
    assert base.scored == 6 and path.read_text().count("\n") == 6
    again = evaluate_mmlu(tiny, records=path, **kw)
    assert again.scored == 0 and again.records == base.records
    more = evaluate_mmlu(tiny, records=path, **{**kw, "per_subject": 4})  # only the new questions are scored
    assert more.scored == 2 and path.read_text().count("\n") == 8
    bundle = random_bundle(tiny, layers=(0, 2))
    with pytest.raises(EvalError, match="bundle"):
        evaluate_mmlu(tiny, records=path, bundle=bundle, **kw)
    off = evaluate_mmlu(tiny, bundle=bundle, steps=0, base=path, **kw)
    assert [r["logprobs"] for r in off.records] == [r["logprobs"] for r in base.records]
    assert off.changed is not None and off.changed.k == 0
    on = evaluate_mmlu(tiny, bundle=bundle, eta=0.5, steps=3, base=base, **kw)
    assert all(r["states_moved"] > 0 for r in on.records)
    assert all(a["logprobs"] != b["logprobs"] for a, b in zip(on.records, base.records, strict=True))
    flipped = sum(a["pred"] != b["pred"] for a, b in zip(on.records, base.records, strict=True))
    assert on.changed is not None and on.changed.k == flipped and on.changed.n == 6
    d = on.to_dict()
    assert d["n"] == 6 and d["accuracy"]["n"] == 6 and d["changed_vs_base"]["k"] == flipped
    with pytest.raises(MMLUError, match="lack"):
        evaluate_mmlu(tiny, base={}, **kw)


@pytest.mark.real
def test_the_pinned_mmlu_file():
    from eds import assets

    if not assets.is_ready("mmlu"):
        pytest.skip("the MMLU asset is not fetched (eds fetch --assets)")
    qs = load_questions()
    assert len(qs) == MMLU_QUESTIONS and len({q.subject for q in qs}) == MMLU_SUBJECTS
    sub = stratified_subset(qs, 5)
    assert len(sub) == 5 * MMLU_SUBJECTS
    assert not any(q.question == "question" for q in qs)
