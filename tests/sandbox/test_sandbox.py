"""Hostile programs in the sandbox: each ends as a failure with its reason, within seconds, and the
host (this test process included) is untouched. A test whose isolation the platform cannot apply
skips with the reason instead of passing without having tested anything."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from distill import sandbox
from distill.sandbox import Limits, run

pytestmark = pytest.mark.timeout(60)  # a sandbox that hangs must fail the test, not the run

LIMITS = Limits(timeout_seconds=2, cpu_seconds=2, memory_mb=256, max_processes=16,
                max_output_bytes=64 * 1024, max_file_bytes=1 << 20, scratch_mb=16)
ROOT = os.geteuid() == 0


def python(code: str, stdin: str | None = None, **limits) -> sandbox.Result:
    return run([sys.executable, "-I", "main.py"], files={"main.py": code}, stdin=stdin,
               limits=dataclasses.replace(LIMITS, **limits))


@pytest.fixture(scope="module")
def isolation() -> sandbox.Result:
    """What this platform applies, probed with a harmless program before any hostile one runs."""
    result = python("print('ready')")
    assert result.ok and result.stdout == "ready\n", result
    return result


def require(probe: sandbox.Result, *names: str) -> None:
    for name in names:
        if name not in probe.isolation and not any(i.startswith(name + ":") for i in probe.isolation):
            why = "; ".join(probe.missing) or "not attempted on this platform"
            pytest.skip(f"{name} isolation not applied here: {why}")


def still_works() -> None:
    result = python("print(6 * 7)")
    assert result.ok and result.stdout == "42\n", result


def sandbox_processes() -> list[int]:
    """Processes running under a sandbox uid (root runs only)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid >= sandbox._UID_BASE:
                pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize(
    "code, stdin, exit_code, killed, stdout",
    [
        ("print(input()[::-1])", "abc\n", 0, None, "cba\n"),
        ("import sys; print(len(sys.stdin.read()))", "x" * 300_000, 0, None, "300000\n"),  # > a pipe buffer
        ("raise SystemExit(3)", None, 3, None, ""),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", None, -signal.SIGSEGV, "signal SIGSEGV", ""),
        ("print(undefined)", None, 1, None, ""),
        ("open('big', 'wb').write(b'x' * 2**21)", None, 1, "file size limit", ""),  # 2 MiB > 1 MiB
        ("import sys; sys.stdout.close(); sys.stderr.close(); import time; time.sleep(60)", None, -9, "timeout", ""),
    ],
)
def test_outcomes(code, stdin, exit_code, killed, stdout):
    result = python(code, stdin=stdin)
    assert (result.exit_code, result.killed, result.stdout) == (exit_code, killed, stdout), result
    assert result.timed_out == (killed == "timeout")


def test_the_working_directory_is_new_empty_and_removed():
    result = python("import os; print(os.getcwd()); print(sorted(os.listdir('.')))")
    cwd, listing = result.stdout.splitlines()
    assert listing == "['main.py']"
    assert not os.path.exists(cwd)


def test_a_command_that_cannot_run_is_a_result():
    result = run(["/nonexistent/interpreter"], limits=LIMITS)
    assert result.exit_code == 127 and result.killed.startswith("sandbox error: cannot run"), result


def test_infinite_loop_is_stopped_by_the_wall_clock():
    start = time.monotonic()
    result = python("while True: pass", timeout_seconds=1, cpu_seconds=30)
    assert result.timed_out and result.killed == "timeout"
    assert time.monotonic() - start < 5
    still_works()


def test_spinning_is_stopped_by_the_cpu_limit():
    result = python("while True: pass", timeout_seconds=20, cpu_seconds=1)
    assert result.killed == "cpu limit" and not result.timed_out, result
    assert result.wall_seconds < 10


def test_fork_bomb(isolation):
    if ROOT:
        require(isolation, "uid")  # the kernel does not count root's processes
    elif any("RLIMIT_NPROC" in m or m.startswith("rlimit processes") for m in isolation.missing):
        pytest.skip(f"no process limit here: {isolation.missing}")
    # First the limit itself: forking stops at max_processes (itself included).
    probe = python(
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n",
        max_processes=8,
    )
    assert probe.stdout.split() == ["7", "11"], probe  # EAGAIN
    # Then a real one: every process forks forever.
    start = time.monotonic()
    result = python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                    timeout_seconds=1, max_processes=8)
    assert result.killed == "timeout" and time.monotonic() - start < 10, result
    if ROOT:
        assert sandbox_processes() == []  # none outlived the run
    still_works()


def test_ten_gigabyte_allocation(isolation):
    if memory := [m for m in isolation.missing if m.startswith(("memory", "rlimit memory"))]:
        pytest.skip(f"no memory limit here: {memory}")  # it would really try
    result = python("x = bytearray(10 * 2**30)\nprint('allocated')", memory_mb=256)
    assert result.killed == "memory limit" and result.exit_code != 0, result
    assert "allocated" not in result.stdout
    still_works()


def test_writing_outside_its_directory(isolation):
    require(isolation, "mountns", "readonly-fs", "tmpfs-workdir", "hidden")
    tag = uuid.uuid4().hex
    # World-writable places (only the mount namespace keeps them private) and this repository.
    targets = [f"/tmp/distill-escape-{tag}", f"/var/tmp/distill-escape-{tag}",
               f"/dev/shm/distill-escape-{tag}", str(Path(__file__).parent / f"escape-{tag}")]
    code = (
        "import sys\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "        print('wrote', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, e.strerror)\n"
    )
    try:
        result = python(code)
        assert result.ok and len(result.stdout.splitlines()) == len(targets), result  # it did try each
        assert [t for t in targets if os.path.exists(t)] == []
    finally:
        for t in targets:
            if os.path.exists(t):
                os.remove(t)
    still_works()


def test_network_is_unreachable(isolation):
    require(isolation, "netns")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    # 192.0.2.1 is a documentation address (RFC 5737): never a real host.
    code = (
        "import socket\n"
        f"for address in [('127.0.0.1', {port}), ('192.0.2.1', 80), ('::1', {port})]:\n"
        "    try:\n"
        "        socket.create_connection(address, timeout=1)\n"
        "        print('connected', address)\n"
        "    except OSError as e:\n"
        "        print('unreachable', address, e.strerror)\n"
    )
    try:
        result = python(code)
        lines = result.stdout.splitlines()
        assert result.ok and len(lines) == 3 and all(line.startswith("unreachable") for line in lines), result
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing got through
    finally:
        server.close()
    still_works()


def test_the_parents_environment_is_not_visible(isolation, monkeypatch):
    if not ROOT:
        require(isolation, "proc")  # else /proc/<pid>/environ of the caller is readable
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("DISTILL_TEST_SECRET", secret)
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            print(pid, name, open(f'/proc/{pid}/{name}', 'rb').read())\n"
        "        except OSError as e:\n"
        "            print(pid, name, e.strerror)\n"
    )
    result = python(code)
    assert result.ok and "'PATH'" in result.stdout, result  # it did print its environment
    assert secret not in result.stdout + result.stderr


def test_printing_a_gigabyte(isolation):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.monotonic()
    result = python("import sys\nfor _ in range(2**14):\n    sys.stdout.buffer.write(b'x' * 2**16)\n",
                    timeout_seconds=20)
    assert result.killed == "output limit" and result.truncated, result
    assert len(result.stdout) == LIMITS.max_output_bytes
    assert time.monotonic() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024
    still_works()


def test_an_ordinary_user_gets_isolation_too(isolation):
    """The non-root path: as root, run the sandbox itself as uid 65534 (nobody)."""
    if not ROOT:
        pytest.skip("already not root: the other tests cover this path")
    # A copy of the sandbox package (standard library only) where nobody can read it, run by an
    # interpreter nobody may execute (the venv's may live in root's home).
    python3 = next((p for p in (sys.executable, shutil.which("python3"), "/usr/bin/python3")
                    if p and _usable_by_nobody(p)), None)
    if python3 is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        copy_package(d)
        driver = (
            "import sys; sys.path.insert(0, sys.argv[1]); import sandbox\n"
            "limits = sandbox.Limits(2, 2, 256, 8, 65536, 1 << 20, 16)\n"
            "code = 'import os, time\\nn = 0\\ntry:\\n    while True:\\n        if os.fork() == 0:\\n"
            "            time.sleep(60)\\n        n += 1\\nexcept OSError:\\n    print(n, dict(os.environ))\\n'\n"
            "r = sandbox.run([sys.executable, '-I', 'main.py'], files={'main.py': code}, limits=limits)\n"
            "print(r.stdout.strip()); print(','.join(r.isolation)); print(r.missing)\n"
        )
        secret = f"secret-{uuid.uuid4().hex}"
        done = subprocess.run([python3, "-I", "-c", driver, d], user=65534, group=65534, extra_groups=[],
                              cwd=d, env={"PATH": "/usr/bin:/bin", "DISTILL_TEST_SECRET": secret},
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    output, applied, missing = done.stdout.splitlines()
    if "userns" not in applied.split(","):
        pytest.skip(f"no unprivileged user namespaces here: {missing}")
    assert output.startswith("7 ") and secret not in done.stdout  # 8 processes; a clean environment
    assert {"netns", "mountns", "pidns", "readonly-fs", "proc"} <= set(applied.split(",")), applied


def copy_package(directory: str) -> None:
    """The sandbox package, readable by anyone, as the top-level package `sandbox` in directory."""
    target = f"{directory}/sandbox"
    shutil.copytree(Path(sandbox.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    os.chmod(target, 0o755)
    for f in Path(target).iterdir():
        f.chmod(0o644)


def test_the_package_runs_on_its_own(tmp_path):
    """Standard library only: a copy runs under `-I -S` (no site-packages, no distill), and the
    launcher, started by file path, finds its helpers next to it."""
    copy_package(str(tmp_path))
    driver = (
        "import sys; sys.path.insert(0, sys.argv[1]); import sandbox\n"
        "limits = sandbox.Limits(5, 5, 256, 8, 65536, 1 << 20, 16)\n"
        "r = sandbox.run([sys.executable, '-I', 'main.py'], files={'main.py': 'print(6 * 7)'}, limits=limits)\n"
        "print(r.ok, r.stdout.strip(), r.killed, sandbox._LAUNCHER.startswith(sys.argv[1]))\n"
        "print(sorted(m for m in sys.modules if m.startswith('distill')))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", driver, str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True 42 None True", "[]"], done.stdout


def _usable_by_nobody(path: str) -> bool:
    try:
        return subprocess.run([path, "-I", "-c", "pass"], user=65534, group=65534, extra_groups=[],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture
def venv_in_tmp():
    """A virtualenv under /tmp, as CI makes one, below a directory only its owner may enter."""
    parent = tempfile.mkdtemp(prefix="sbx-venv-", dir="/tmp")
    venv = os.path.join(parent, "venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60,
                       capture_output=True)
        # Writable by anyone on the host: only the sandbox's read-only view may refuse a write.
        os.chmod(venv, 0o777)
        os.chmod(f"{venv}/bin", 0o777)
        yield venv
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize("caller", [False, True], ids=["program-from-venv", "caller-from-venv"])
def test_tmp_is_hidden_from_an_interpreter_that_lives_there(isolation, venv_in_tmp, tmp_path, caller):
    require(isolation, "mountns", "readonly-fs", "hidden")
    venv = venv_in_tmp
    planted = [f"/tmp/distill-planted-{uuid.uuid4().hex}", f"{os.path.dirname(venv)}/planted"]
    for path in planted:
        Path(path).write_text("host secret")
        os.chmod(path, 0o644)  # readable by any uid: only hiding /tmp keeps it out of reach
    code = (
        "import os, sys\n"
        "print(sys.prefix)\n"
        "print(sorted(os.listdir('/tmp')))\n"
        f"for path in {planted!r}:\n"
        "    try:\n"
        "        print('read', open(path).read())\n"
        "    except OSError as e:\n"
        "        print('unreadable', e.strerror)\n"
        f"for path in [{venv + '/escape'!r}, {venv + '/bin/escape'!r}]:\n"
        "    try:\n"
        "        open(path, 'w').write('escaped')\n"
        "        print('wrote', path)\n"
        "    except OSError as e:\n"
        "        print('refused', e.strerror)\n"
    )
    if caller:  # the whole of distill runs from the venv: the launcher is that interpreter too
        copy_package(str(tmp_path))
        driver = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import sandbox\n"
            "limits = sandbox.Limits(10, 5, 256, 8, 65536, 1 << 20, 16)\n"
            "r = sandbox.run([sys.executable, '-I', 'main.py'], files={'main.py': sys.argv[2]}, limits=limits)\n"
            "print(json.dumps([r.exit_code, r.stdout, r.stderr, r.isolation, r.missing]))\n"
        )
        done = subprocess.run([f"{venv}/bin/python", "-I", "-S", "-c", driver, str(tmp_path), code], check=False,
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        exit_code, stdout, stderr, applied, missing = json.loads(done.stdout)
    else:
        result = run([f"{venv}/bin/python", "-I", "main.py"], files={"main.py": code}, limits=LIMITS)
        exit_code, stdout, stderr, applied, missing = (result.exit_code, result.stdout, result.stderr,
                                                       result.isolation, result.missing)
    try:
        assert exit_code == 0, (stdout, stderr, missing)
        lines = stdout.splitlines()
        assert lines[0] == venv  # its own venv, found through the directory bound back
        assert not any(os.path.basename(p) in lines[1] for p in planted), lines[1]
        assert lines[2:4] == ["unreadable No such file or directory"] * 2, stdout
        assert lines[4:] == ["refused Read-only file system"] * 2, stdout
        assert not any(m.startswith("hide /tmp") for m in missing), missing
        assert any(a.startswith("hidden:") and "/tmp" in a[len("hidden:"):].split(",") for a in applied), applied
    finally:
        for path in planted:
            os.remove(path)
    assert not os.path.exists(f"{venv}/escape") and not os.path.exists(f"{venv}/bin/escape")
