import os
import socket
import uuid
from pathlib import Path

import pytest

from eds.sandbox import SandboxResult, isolation, run_many, run_python


def test_correct_program_passes_and_prints():
    r = run_python("def f(x):\n    return x * 2\nassert f(21) == 42\nprint('fine', f(21))", timeout_s=5)
    assert isinstance(r, SandboxResult)
    assert r.status == "ok" and r.ok and r.returncode == 0
    assert "fine 42" in r.stdout


def test_failing_assertion_is_failed_with_the_error():
    r = run_python("assert 1 + 1 == 3, 'arithmetic'", timeout_s=5)
    assert r.status == "failed" and r.returncode == 1
    assert "AssertionError: arithmetic" in r.detail


def test_syntax_error_is_failed():
    r = run_python("def f(:\n  pass", timeout_s=5)
    assert r.status == "failed" and "SyntaxError" in r.stderr


def test_infinite_loop_is_killed_at_the_time_limit():
    r = run_python("while True:\n    pass", timeout_s=1.5)
    assert r.status == "timeout"
    assert 1.4 < r.seconds < 6


def test_sleeping_program_is_killed_too():
    """Wall time, not CPU time: a program that waits forever is stopped as well."""
    r = run_python("import time\ntime.sleep(60)", timeout_s=1)
    assert r.status == "timeout" and r.seconds < 6


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append(' ' * 10**6)"],
    ids=["bytearray", "growing-list"],
)
def test_memory_bomb_is_memory(code):
    r = run_python(code, timeout_s=10, memory_mb=256)
    assert r.status == "memory", (r.status, r.detail, r.stderr[-300:])


def test_write_outside_is_blocked_and_leaves_no_file(tmp_path):
    outside = Path("/tmp") / f"eds-sandbox-test-{uuid.uuid4().hex}"
    outside.mkdir()
    try:
        target = outside / "outside.txt"
        # a try/except in the program cannot swallow the denial
        code = f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept Exception:\n    pass\nprint('went on')"
        r = run_python(code, timeout_s=5)
        assert r.status == "blocked" and r.detail.startswith("open")
        assert "went on" not in r.stdout
        assert not target.exists()
        for code in (
            f"import os\nos.mkdir({str(outside / 'd')!r})",
            f"import os\nos.rename({str(outside)!r}, 'here')",
            f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
            f"import os\nos.symlink({str(target)!r}, 'link')",
            f"import shutil\nshutil.rmtree({str(outside)!r})",
            f"import os\nfd = os.open({str(outside)!r}, os.O_RDONLY)\n"
            "os.open('x', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
            "open('../escape.txt', 'w')",
        ):
            r = run_python(code, timeout_s=5)
            assert r.status == "blocked", (code, r.status, r.stderr[-300:])
        assert outside.is_dir() and list(outside.iterdir()) == []
    finally:
        for p in outside.iterdir():
            p.unlink()
        outside.rmdir()


def test_writing_inside_the_directory_works_and_is_deleted():
    code = (
        "import os, tempfile\n"
        "open('inside.txt', 'w').write('hello')\n"
        "os.mkdir('d'); os.rename('inside.txt', 'd/moved.txt')\n"
        "print(open('d/moved.txt').read(), os.getcwd())\n"
        "tempfile.TemporaryFile().write(b'x')\n"
    )
    r = run_python(code, timeout_s=5)
    assert r.status == "ok", r.stderr
    text, cwd = r.stdout.split()
    assert text == "hello"
    assert not Path(cwd).exists()  # the directory is removed afterwards


@pytest.mark.parametrize(
    "code, event",
    [
        ("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))", "socket."),
        ("import socket\nsocket.getaddrinfo('localhost', 80)", "socket."),
        ("import os\nos.system('true')", "os.system"),
        ("import subprocess\nsubprocess.run(['true'])", "import"),
        ("import os\nos.fork()", "os.fork"),
        ("import os\nos.execv('/bin/true', ['true'])", "os.exec"),
        ("import ctypes", "import"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
        ("import gc\ngc.get_objects()", "gc.get_objects"),
    ],
)
def test_network_processes_and_escapes_are_blocked(code, event):
    r = run_python(code, timeout_s=5)
    assert r.status == "blocked", (r.status, r.stderr[-300:])
    assert r.detail.startswith(event)


def test_network_namespace_when_available():
    """Below the hook: where unshare works, the child has no network interface but loopback."""
    if not any(p == "unshare" for p in isolation()):
        pytest.skip("no network namespace on this machine")
    r = run_python("print(open('/proc/net/dev').read())", timeout_s=5)
    assert r.status == "ok"
    interfaces = [line.split(":")[0].strip() for line in r.stdout.splitlines()[2:] if ":" in line]
    assert interfaces == ["lo"]


def test_evaluating_process_is_unaffected(tmp_path):
    cwd, env = os.getcwd(), dict(os.environ)
    run_python("import os\nos.chdir('/')\nos.environ['EDS_SANDBOX_X'] = '1'\nx = bytearray(10**10)", timeout_s=5)
    run_python("while True: pass", timeout_s=1)
    assert os.getcwd() == cwd and dict(os.environ) == env
    # this process can still allocate, write and open sockets
    (tmp_path / "f.txt").write_text("still writable")
    big = bytearray(2 * 10**8)
    assert len(big) == 2 * 10**8
    s = socket.socket()
    s.close()


def test_run_many_keeps_order():
    out = run_many([f"print({i})" for i in range(5)] + ["while True: pass"], workers=2, timeout_s=1)
    assert [r.stdout.strip() for r in out[:5]] == [str(i) for i in range(5)]
    assert out[5].status == "timeout"


def test_bad_limits_raise():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)
