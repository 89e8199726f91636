"""Run untrusted, model-written Python in a separate, limited process (never in the evaluating one).

What `run_python` does, in layers:

* a fresh `python -I -B` process in a new session (its process group is killed with SIGKILL at the
  wall-clock limit and again on exit, so nothing it leaves behind keeps running), stdin from
  /dev/null, an environment holding only LANG/HOME/TMPDIR/PATH, and a fresh temporary directory as
  its working directory, deleted afterwards;
* resource limits set in the child before the program runs, soft = hard: RLIMIT_AS (memory),
  RLIMIT_CPU, RLIMIT_FSIZE (files and the captured output), RLIMIT_NPROC, RLIMIT_NOFILE, no core files;
* an audit hook (`sys.addaudithook`; Python code cannot remove one) installed before the program is
  compiled into the process. A denied event ends the process at once with `os._exit` (so a
  `try/except` in the program cannot swallow the denial) and status "blocked" names the event. It
  denies: all `socket.*` events (creation, connect, bind, getaddrinfo, ...); opening a file for
  writing/appending/creating outside the temporary directory, and `os.open` for writing by a
  relative path (its `dir_fd` is invisible to the hook); remove/rename/rmdir/mkdir/chmod/chown/truncate/utime/
  xattr outside the directory or through a `dir_fd`/file descriptor; links and symlinks; process
  creation (`subprocess.Popen`, `os.system`, `os.exec*`, `os.spawn*`, `os.fork`, `os.posix_spawn`,
  `pty.spawn`), signals to other processes; `ctypes`; raising resource limits; importing
  `_posixsubprocess`, `_ctypes`, sub-interpreters and CPython's `_test*` modules; the `gc` walks
  that would reach the hook's own function object, and swapping a function's `__code__`;
* where this machine allows it (probed once per process, silently skipped otherwise): a private
  network namespace (`unshare -n`, or `unshare -rn` when not root), so even a hook bypass has no
  network; and, when running as root, `setpriv` dropping every capability (no device nodes, no
  reading or writing files of other users by capability, no raising hard limits) with no_new_privs.

What it does NOT protect against (it is not a security boundary like a container or a VM):

* the program runs as the calling user (root stays uid 0, without capabilities where `setpriv`
  works): if it escapes the audit hook it can write whatever that user may write, and without a
  network namespace it can reach the network;
* audit hooks are a CPython debugging feature, not a sandbox: a determined program can corrupt
  interpreter memory (crafted bytecode via `code.__new__`/`marshal`, buffer bugs in C extensions)
  and so switch the hook off; monkey-patching modules cannot (the hook captures what it uses);
* it can read any file the user can read, and it can use the CPU and memory up to its limits (run
  few of them at once on a small machine); there is no seccomp filter and no filesystem isolation.

It is meant for code written by a language model under evaluation, which is careless, not hostile.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("ok", "failed", "timeout", "memory", "blocked")
_BLOCKED_CODE = 97
_MEMORY_CODE = 98
_TAIL = 4000

# Runs in the child, before the program: limits, then the audit hook, then the program.
_BOOT = r"""
import os, sys, resource
def _setup():
    root, prog = sys.argv[1], sys.argv[2]
    mem, cpu, fsize, nproc = (int(x) for x in sys.argv[3:7])
    for lim, v in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(lim, (v, v))
        except (ValueError, OSError):
            if lim in (resource.RLIMIT_AS, resource.RLIMIT_CPU):
                raise
    with open(prog, encoding="utf-8") as f:
        src = f.read()
    return root, src

_ROOT, _SRC = _setup()
del _setup
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _norm(p, cwd):
    # pure string normalisation: no calls that the program could have monkey-patched
    if not p.startswith("/"):
        p = cwd + "/" + p
    parts = []
    for part in p.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)

def _hook(event, args, _root=_ROOT, _norm=_norm, _getcwd=os.getcwd, _write=os.write, _exit=os._exit,
          _wflags=_WRITE_FLAGS, _type=type, _str=str, _bytes=bytes, _int=int, _repr=repr, _len=len,
          _deny_prefix=("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                        "os.fork", "os.forkpty", "pty.", "os.kill", "os.killpg", "os.pidfd_open",
                        "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "os.link",
                        "os.symlink", "sys.setprofile", "sys.settrace", "gc.get_"),
          _deny_exact=frozenset(("os.system", "os.startfile", "os.mknod", "os.mkfifo", "shutil.chown",
                                 "_xxsubinterpreters.create", "os.chroot", "os.setuid", "os.setgid",
                                 "cpython.run_command", "cpython.run_file", "code.__new__")),
          _deny_import=frozenset(("_posixsubprocess", "_ctypes", "ctypes", "_xxsubinterpreters",
                                  "_xxinterpchannels", "_posixshmem", "_multiprocessing", "pty")),
          # event: (positions of paths it writes to, positions of dir_fd arguments)
          _path_events={"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
                        "os.rename": ((0, 1), (2, 3)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
                        "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)), "os.chflags": ((0,), ()),
                        "os.lchflags": ((0,), ()), "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
                        "shutil.rmtree": ((0,), (1,)), "shutil.copyfile": ((1,), ()), "shutil.copymode": ((1,), ()),
                        "shutil.copystat": ((1,), ()), "shutil.copytree": ((1,), ()), "shutil.move": ((0, 1), ()),
                        "shutil.make_archive": ((0,), ()), "shutil.unpack_archive": ((1,), ())}):
    why = None
    if event == "open":
        path, mode, flags = args[0], args[1], args[2]
        writing = (flags or 0) & _wflags or (_type(mode) is _str and ("w" in mode or "a" in mode or "+" in mode))
        writing = writing or (_type(mode) is _str and "x" in mode)
        if writing and _type(path) is not _int:
            if _type(path) is _bytes:
                path = path.decode("utf-8", "surrogateescape")
            elif _type(path) is not _str:
                why = "a path that is not a plain str"
            if why is None and mode is None and not path.startswith("/"):
                why = "os.open for writing by a relative path"  # its dir_fd is invisible here
            if why is None:
                p = _norm(path, _getcwd())
                if p != "/dev/null" and not (p == _root or p.startswith(_root + "/")):
                    why = "write outside the sandbox directory: " + p
    elif event in _path_events:
        paths, fds = _path_events[event]
        for i in fds:
            if _len(args) > i and args[i] is not None and args[i] != -1:  # -1: no dir_fd
                why = "a directory file descriptor"
        for i in paths:
            path = args[i] if _len(args) > i else None
            if path is None or (event == "os.truncate" and _type(path) is _int):
                continue  # truncating an open file: it was opened for writing inside the directory
            if _type(path) is _bytes:
                path = path.decode("utf-8", "surrogateescape")
            if _type(path) is not _str:
                why = "a path that is not a plain str"
                break
            p = _norm(path, _getcwd())
            if not (p == _root or p.startswith(_root + "/")):
                why = "outside the sandbox directory: " + p
                break
    elif event == "import":
        if _type(args[0]) is not _str or args[0] in _deny_import or args[0].startswith("_test"):
            why = "import " + args[0]
    elif event == "object.__setattr__":
        if args[1] == "__code__":
            why = "setting " + _str(args[1])
    elif event in _deny_exact or event.startswith(_deny_prefix):
        why = "not allowed"
    if why is not None:
        msg = "\neds-sandbox: blocked " + event + " (" + why + ")\n"
        try:
            _write(2, msg.encode("utf-8", "replace"))
        finally:
            _exit(__BLOCKED__)

sys.addaudithook(_hook)
del _hook, _norm
sys.dont_write_bytecode = True
try:
    _code = compile(_SRC, "main.py", "exec")
    del _SRC
    exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
except MemoryError:
    os._exit(__MEMORY__)
except SystemExit:
    raise
except BaseException:
    try:
        import traceback
        traceback.print_exc()
    except MemoryError:
        os._exit(__MEMORY__)
    sys.stderr.flush()
    os._exit(1)
""".replace("__BLOCKED__", str(_BLOCKED_CODE)).replace("__MEMORY__", str(_MEMORY_CODE))


@dataclass
class SandboxResult:
    """How one program ended. `status`: ok (exit 0), failed (error or non-zero exit), timeout (wall or CPU
    limit), memory (MemoryError or killed under the memory limit), blocked (the audit hook denied
    `detail`'s event). stdout/stderr are tails of at most a few thousand characters."""

    status: str
    returncode: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _can_run(prefix: list[str]) -> bool:
    if prefix and shutil.which(prefix[0]) is None:
        return False
    try:
        r = subprocess.run(
            [*prefix, sys.executable, "-I", "-c", "print(1)"],
            capture_output=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and r.stdout.strip() == b"1"


@functools.lru_cache(maxsize=1)
def isolation() -> tuple[str, ...]:
    """The command prefix this machine allows: network namespace and dropped capabilities where possible."""
    net = ["unshare", "-n", "--"] if os.geteuid() == 0 else ["unshare", "-rn", "--"]
    caps = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"] if os.geteuid() == 0 else []
    for prefix in ([*net, *caps], net, caps):
        if prefix and _can_run(prefix):
            return tuple(prefix)
    return ()


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL))
        return f.read().decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_python(
    code: str,
    *,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    output_mb: int = 16,
    max_processes: int = 256,
    network_namespace: bool = True,
) -> SandboxResult:
    """Run `code` as a Python program in a limited child process (see the module docstring) and say how it ended."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
    prefix = list(isolation()) if network_namespace else []
    outer = Path(tempfile.mkdtemp(prefix="eds-sandbox-"))
    try:
        work = outer / "work"
        work.mkdir()
        root = str(work.resolve())
        prog = outer / "main.py"
        prog.write_text(code, encoding="utf-8")
        cpu = int(timeout_s) + 1
        cmd = [
            *prefix,
            sys.executable,
            "-I",
            "-B",
            "-c",
            _BOOT,
            root,
            str(prog),
            str(memory_mb * 2**20),
            str(cpu),
            str(output_mb * 2**20),
            str(max_processes),
        ]
        env = {"LANG": "C.UTF-8", "HOME": root, "TMPDIR": root, "PATH": "/usr/bin:/bin"}
        out_path, err_path = outer / "stdout", outer / "stderr"
        timed_out = False
        t0 = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            finally:
                _kill_group(proc.pid)  # anything the program left running in its group
        seconds = time.perf_counter() - t0
        rc = proc.returncode
        stdout, stderr = _tail(out_path), _tail(err_path)
    finally:
        shutil.rmtree(outer, ignore_errors=True)
    status, detail = _classify(rc, timed_out, seconds, cpu, stderr)
    return SandboxResult(status, rc, seconds, stdout, stderr, detail)


def _classify(rc: int, timed_out: bool, seconds: float, cpu: int, stderr: str) -> tuple[str, str]:
    if timed_out:
        return "timeout", "wall-clock limit"
    if rc == 0:
        return "ok", ""
    if rc == _BLOCKED_CODE and "eds-sandbox: blocked " in stderr:
        line = stderr[stderr.rindex("eds-sandbox: blocked ") :].splitlines()[0]
        return "blocked", line.removeprefix("eds-sandbox: blocked ")
    if rc == _MEMORY_CODE:
        return "memory", "MemoryError"
    if rc == -signal.SIGXCPU:
        return "timeout", "CPU limit"
    if rc == -signal.SIGKILL:
        return ("timeout", "CPU limit") if seconds >= cpu else ("memory", "killed (SIGKILL) under the memory limit")
    if rc == -signal.SIGXFSZ:
        return "failed", "file or output size limit"
    if rc is not None and rc < 0:
        return "failed", f"killed by signal {-rc}"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {rc}"
    return "failed", last[:300]


def run_many(codes: Sequence[str], *, workers: int = 2, **kwargs) -> list[SandboxResult]:
    """`run_python` over several programs, `workers` child processes at a time, results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(codes) <= 1:
        return [run_python(c, **kwargs) for c in codes]
    isolation()  # probe once, before the threads
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_python(c, **kwargs), codes))
