import gzip
import json
import textwrap

import pytest

import eds.humaneval as he
from eds.evaluate import EvalError
from eds.humaneval import (
    HUMANEVAL_PROBLEMS,
    HumanEvalError,
    Problem,
    build_program,
    evaluate_humaneval,
    extract_code,
    format_prompt,
    load_problems,
    read_problems,
    run_completions,
)
from eds.testing import random_bundle

STUB = (
    "import math\n\n\ndef _helper(x):\n    return x + 1\n\n\n"
    'def add_one(x: int) -> int:\n    """Add one.\n    >>> add_one(1)\n    2\n    """\n'
)
TEST = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"


def problem(i: int = 0) -> Problem:
    return Problem(f"Test/{i}", STUB, "add_one", TEST, "    return _helper(x)\n", i + 1)


def problems(n: int) -> list[Problem]:
    return [problem(i) for i in range(n)]


@pytest.mark.parametrize(
    "reply",
    [
        # the whole function restated in a fence, with prose around it
        "Sure!\n```python\ndef add_one(x: int) -> int:\n    return x + 1\n```\nThis adds one.",
        # a restated function that uses the stub's import and helper
        "```python\ndef add_one(x):\n    return int(math.floor(_helper(x)))\n```",
        # only a body, indented or not
        "```python\n    return x + 1\n```",
        "```python\nreturn _helper(x)\n```",
        # no fence at all
        "def add_one(x):\n    return x + 1",
        # a fence cut by the token limit
        "```python\ndef add_one(x):\n    return x + 1\n\n# and now some more",
        # a demo under a main guard is dropped (it would fail here)
        "```python\ndef add_one(x):\n    return x + 1\n\nif __name__ == '__main__':\n    assert add_one(5) == 0\n```",
        # a non-python block first, the defining block later
        "```bash\npip install nothing\n```\n```py\ndef helper2():\n    pass\n```\n```python\ndef add_one(x):\n"
        "    return x + 1\n```",
    ],
)
def test_extraction_variants_pass(reply):
    p = problem()
    code = extract_code(reply, p)
    (run,) = run_completions([p], [code], timeout_s=5)
    assert run["passed"], (code, run)


@pytest.mark.parametrize(
    "reply, status",
    [
        ("```python\ndef add_one(x):\n    return x\n```", "failed"),
        ("I cannot help with that.", "failed"),
        ("", "failed"),
        ("```python\nimport sys\nsys.exit(0)\n```", "failed"),  # leaving early is not passing
        ("```python\ndef add_one(x):\n    while True:\n        pass\n```", "timeout"),
        ("```python\ndef add_one(x):\n    open('/etc/eds-test', 'w')\n```", "blocked"),
    ],
)
def test_wrong_replies_do_not_pass(reply, status):
    p = problem()
    (run,) = run_completions([p], [extract_code(reply, p)], timeout_s=1.5)
    assert not run["passed"] and run["status"] == status, run


def test_program_keeps_the_stub_imports_and_tests():
    p = problem()
    prog = build_program(p, extract_code("```python\nreturn x + 1\n```", p), "MARK")
    assert prog.startswith(STUB) and TEST in prog
    assert prog.rstrip().endswith("check(add_one)\nprint('MARK')")
    assert "```python\n" + STUB.rstrip() + "\n```" in format_prompt(p)


def _write(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def test_read_problems_and_errors_name_file_and_line(tmp_path):
    good = {"task_id": "T/0", "prompt": STUB, "entry_point": "add_one", "test": TEST, "canonical_solution": "x"}
    path = tmp_path / "he.jsonl.gz"
    _write(path, [good, {**good, "task_id": "T/1"}])
    ps = read_problems(path, expect=2)
    assert [p.task_id for p in ps] == ["T/0", "T/1"] and ps[1].line == 2
    with pytest.raises(HumanEvalError, match="2 problems, expected 164"):
        read_problems(path, expect=164)
    for bad, msg in [
        ("{not json", "invalid JSON"),
        ({**good, "task_id": "T/1", "test": ""}, "test"),
        ({**good, "task_id": "T/1", "entry_point": "a b"}, "not a Python name"),
        (good, "appears twice"),
    ]:
        _write(path, [good, bad])
        with pytest.raises(HumanEvalError, match=rf"he.jsonl.gz, line 2: .*{msg}"):
            read_problems(path)


def fake_generate(calls, fail_after=None):
    """Replies with a correct whole function for even task numbers and a wrong one for odd; counts prompts."""

    def gen(lm, prompts, *, bundle=None, max_new_tokens=0, batch_size=1, progress=False, **kw):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("interrupted")
        calls.extend(prompts)
        replies = []
        for p in prompts:
            i = int(p.split("# task ")[1].split("\n")[0])
            body = "x + 1" if i % 2 == 0 else "x"
            replies.append(f"```python\ndef add_one(x):\n    return {body}\n```")
        return replies, [0] * len(prompts)

    return gen


def numbered(n: int) -> list[Problem]:
    # distinct prompts so the fake can tell problems apart; lengths differ so sorting reorders them
    return [Problem(f"Test/{i}", f"# task {i}\n" + "#" * i + "\n" + STUB, "add_one", TEST, "", i + 1) for i in range(n)]


def test_resume_after_interruption_generates_nothing_twice(tmp_path, tiny, monkeypatch):
    ps = numbered(7)
    path = tmp_path / "he.jsonl"
    calls: list[str] = []
    monkeypatch.setattr(he, "generate", fake_generate(calls, fail_after=3))
    kw = dict(problems=ps, batch_size=3, max_new_tokens=32, progress=False, timeout_s=5)
    with pytest.raises(KeyboardInterrupt):
        evaluate_humaneval(tiny, records=path, **kw)
    assert len(calls) == 3 and path.read_text().count("\n") == 3  # the first batch was kept
    monkeypatch.setattr(he, "generate", fake_generate(calls))
    res = evaluate_humaneval(tiny, records=path, **kw)
    assert len(calls) == 7 and len(set(calls)) == 7  # every problem generated exactly once
    assert res.evaluated == 4 and res.n == 7
    assert res.pass_at_1.k == 4  # tasks 0, 2, 4, 6
    assert res.statuses == {"passed": 4, "failed": 3, "timeout": 0, "memory": 0, "blocked": 0}
    assert [r["task_id"] for r in res.records] == [p.task_id for p in ps]
    rec = json.loads(path.read_text().splitlines()[0])
    for key in ("task_id", "prompt", "response", "completion", "status", "passed", "moved"):
        assert key in rec
    d = res.to_dict()
    assert d["pass_at_1"]["k"] == 4 and d["pass_at_1"]["n"] == 7 and d["n"] == 7 and d["failed"] == 3
    # nothing left to do: no generation at all; a smaller limit is the first N by task order
    again = evaluate_humaneval(tiny, records=path, **kw)
    assert len(calls) == 7 and again.records == res.records
    first = evaluate_humaneval(tiny, records=path, limit=2, **kw)
    assert [r["task_id"] for r in first.records] == ["Test/0", "Test/1"] and first.pass_at_1.k == 1


def test_settings_mismatch_is_refused(tmp_path, tiny, monkeypatch):
    ps = numbered(2)
    path = tmp_path / "he.jsonl"
    monkeypatch.setattr(he, "generate", fake_generate([]))
    kw = dict(problems=ps, batch_size=2, progress=False, timeout_s=5)
    evaluate_humaneval(tiny, records=path, max_new_tokens=32, **kw)
    with pytest.raises(EvalError, match="max_new_tokens"):
        evaluate_humaneval(tiny, records=path, max_new_tokens=64, **kw)
    with pytest.raises(EvalError, match="bundle"):
        evaluate_humaneval(tiny, records=path, max_new_tokens=32, bundle=random_bundle(tiny, layers=(0,)), **kw)
    with pytest.raises(HumanEvalError, match="limit"):
        evaluate_humaneval(tiny, limit=0, max_new_tokens=32, **kw)


def test_real_generation_on_the_tiny_model_runs_end_to_end(tmp_path, tiny):
    """No fake: the tiny random model's replies go through extraction and the sandbox and fail cleanly."""
    res = evaluate_humaneval(tiny, problems=problems(2), max_new_tokens=8, batch_size=2, progress=False, timeout_s=5)
    assert res.n == 2 and res.pass_at_1.k == 0 and sum(res.statuses.values()) == 2


@pytest.mark.real
def test_canonical_solutions_all_pass():
    from eds import assets

    if not assets.is_ready("humaneval"):
        pytest.skip("the HumanEval asset is not fetched (eds fetch --assets)")
    ps = load_problems()
    assert len(ps) == HUMANEVAL_PROBLEMS
    runs = run_completions(ps, [p.canonical_solution for p in ps])
    assert [p.task_id for p, r in zip(ps, runs, strict=True) if not r["passed"]] == []
    # and through extraction, as a model restating the whole function would reply
    replies = [f"```python\n{p.prompt}{p.canonical_solution}```" for p in ps[:40]]
    runs = run_completions(ps[:40], [extract_code(r, p) for r, p in zip(replies, ps[:40], strict=True)])
    assert all(r["passed"] for r in runs)
    # a wrong function fails every problem's tests
    wrong = [extract_code(textwrap.dedent(f"def {p.entry_point}(*a, **k):\n    return None\n"), p) for p in ps[:40]]
    assert not any(r["passed"] for r in run_completions(ps[:40], wrong))
