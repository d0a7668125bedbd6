"""code: the completion's program passes the prompt's tests, each run in the sandbox (distill/sandbox/).

The program is a fenced block of the completion: the last one labelled with the language
(```python, ```py or ```python3 for Python), else the last fenced block whatever its label. Text up
to `think_close_tag` ("</think>") is reasoning and not read; a reasoning block that is never
closed leaves nothing to read. No program (no fenced block, or an empty one) scores 0.0.

The reference is JSON text (or a Python literal, which is what a prompt file's object field
becomes as a string) holding an object with one or more of:

    {"tests": [{"input": "1 2\\n", "output": "3\\n"}, ...],
     "asserts": ["assert add(1, 2) == 3", ...],
     "test_code": "assert add(2, 2) == 4\\nassert add(0, 0) == 0"}

- tests: stdin/stdout cases. The program reads "input" (optional, default empty) on stdin; it
  passes when it exits 0 and its stdout equals "output" once trailing whitespace is stripped
  from every line and trailing blank lines are dropped.
- asserts: each is one test, run after the program's code in the same file, in its own process,
  so one failure does not hide the others. It passes when the process exits 0 having run the
  test code to its end (a program that exits 0 before it fails).
- test_code: one test, run after the program's code like an assert.
The program's code runs as the main module: an `if __name__ == "__main__":` block runs too, with
an empty stdin. Other keys are errors (a typo is not silently "no tests").

Score: the fraction of tests passed. The reason counts them and says why tests failed:
"3/4 tests passed; test 2: wrong output (expected '3', got '4')", "0/2 tests passed; tests 1, 2:
timeout after 5s", "killed: memory limit", "exit code 1: NameError: ...".
None ("cannot verify") when there is no reference, it is not valid, or it holds no tests.

Languages: LANGUAGES below, a table of fence labels, file name and command; supported: python
(the interpreter running distill, in isolated mode -I). Tests of a batch run in parallel on
`workers` threads, each driving one sandboxed process; identical (program, test) pairs, common
among samples of one prompt, run once. Isolation the kernel did not allow is logged once.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import Field

from distill import sandbox
from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict, VerifyContext, parse_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Language:
    fences: tuple[str, ...]  # fence labels of a block in this language, lower case
    file: str  # the program's file name in its working directory
    command: tuple[str, ...]  # argv; "{file}" stands for the file name


# To add a language: its fence labels, file name and command. The sandbox must be able to run
# the command as an unprivileged user (see the sandbox's docstring).
LANGUAGES = {
    "python": Language(("python", "py", "python3"), "main.py", (sys.executable, "-I", "{file}")),
}

_REFERENCE_KEYS = ("tests", "asserts", "test_code")
# A fence opens and closes on its own line; the label says the language.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.M | re.S)
_SHOWN = 40  # characters of an output or an assert quoted in a reason
_missing_logged: set[str] = set()


class CodeParams(Params):
    # python: the one language in LANGUAGES so far.
    language: Literal[tuple(LANGUAGES)] = "python"  # type: ignore[valid-type]
    # 5 s: ample for a correct solution on one contest-sized test, even in Python.
    timeout_seconds: float = Field(5.0, gt=0)
    # 5 s: the same budget in CPU time, per process: a spinning child is stopped too.
    cpu_seconds: int = Field(5, ge=1)
    # 1024 MB of address space, which is what an interpreter reserves, not what it touches.
    memory_mb: int = Field(1024, ge=32)
    # 32 processes and threads: room for a small pool; a fork bomb stops there.
    max_processes: int = Field(32, ge=1)
    # 4 MiB per stream: above any expected output we compare; more is a runaway print loop.
    max_output_bytes: int = Field(4 << 20, ge=1024)
    # 16 MB: solutions seldom write files; this stops one file from filling the disk.
    max_file_mb: int = Field(16, ge=1)
    # 64 MB tmpfs for the working dir and /tmp (Linux namespaces): bounds what many files can fill.
    scratch_mb: int = Field(64, ge=1)
    # None: one per CPU core, as each test keeps one core busy.
    workers: int | None = Field(None, ge=1)
    # Code drafted while reasoning is not the answer. None: read the whole completion.
    think_close_tag: str | None = Field("</think>", min_length=1)


@dataclass(frozen=True)
class _Test:
    kind: Literal["stdio", "assert", "test_code"]
    stdin: str = ""
    expected: str = ""
    code: str = ""  # appended to the program (asserts, test_code)


class BadReference(ValueError):
    """Why a reference holds no usable tests; the message is the verdict's reason."""


def extract_program(completion: str, language: str = "python",
                    think_close_tag: str | None = "</think>") -> str | None:
    """The program in a completion: its last block in `language`, else its last fenced block."""
    text = completion
    if think_close_tag:
        if think_close_tag in text:
            text = text.rpartition(think_close_tag)[2]
        elif think_close_tag.startswith("</") and (open_tag := "<" + think_close_tag[2:]) in text:
            text = text.partition(open_tag)[0]  # still reasoning when it stopped
    blocks = _FENCE.findall(text)
    labelled = [body for label, body in blocks if label.lower() in LANGUAGES[language].fences]
    program = labelled[-1] if labelled else blocks[-1][1] if blocks else ""
    return textwrap.dedent(program) if program.strip() else None  # a fence in a list is indented


@lru_cache(maxsize=1024)  # the samples of one prompt share its reference
def _tests(text: str) -> tuple[_Test, ...]:
    try:
        ref = parse_reference(text)
    except ValueError as e:
        raise BadReference(str(e)) from None
    if not isinstance(ref, dict):
        raise BadReference("reference is not a JSON object with tests, asserts or test_code")
    if unknown := [k for k in ref if k not in _REFERENCE_KEYS]:
        keys = ", ".join(map(repr, unknown))
        raise BadReference(f"reference has unknown key(s) {keys}; allowed: {', '.join(_REFERENCE_KEYS)}")
    tests = []
    cases = ref.get("tests") or []
    if not isinstance(cases, list):
        raise BadReference("reference tests must be a list of {input, output} objects")
    for i, case in enumerate(cases, 1):
        if not isinstance(case, dict) or not isinstance(case.get("output"), str):
            raise BadReference(f"reference test {i} has no output string")
        if extra := [k for k in case if k not in ("input", "output")]:
            keys = ", ".join(map(repr, extra))
            raise BadReference(f"reference test {i} has unknown key(s) {keys}; allowed: input, output")
        if not isinstance(case.get("input", ""), str):
            raise BadReference(f"reference test {i}: input must be a string")
        tests.append(_Test("stdio", stdin=case.get("input", ""), expected=case["output"]))
    asserts = ref.get("asserts") or []
    if not isinstance(asserts, list) or not all(isinstance(a, str) and a.strip() for a in asserts):
        raise BadReference("reference asserts must be a list of non-empty strings")
    tests += [_Test("assert", code=a) for a in asserts]
    test_code = ref.get("test_code")
    if test_code is not None and not isinstance(test_code, str):
        raise BadReference("reference test_code must be a string")
    if test_code and test_code.strip():
        tests.append(_Test("test_code", code=test_code))
    if not tests:
        raise BadReference("reference has no tests")
    return tuple(tests)


def _limits(p: CodeParams) -> sandbox.Limits:
    return sandbox.Limits(
        timeout_seconds=p.timeout_seconds, cpu_seconds=p.cpu_seconds, memory_mb=p.memory_mb,
        max_processes=p.max_processes, max_output_bytes=p.max_output_bytes,
        max_file_bytes=p.max_file_mb << 20, scratch_mb=p.scratch_mb,
    )


def _run(program: str, test: _Test, language: Language, limits: sandbox.Limits) -> tuple[sandbox.Result, bool]:
    """The sandbox's result, and whether an assert or test_code ran to its end.

    A program that exits 0 before the test code after it (`sys.exit(0)`, `os._exit(0)`, an
    `if __name__ == "__main__":` block that exits) would pass every assert unrun: the test code
    is followed by a line that writes a fresh random marker, and the test passes only when the
    marker is in the output. A stdin/stdout test needs none: its output is compared.
    """
    argv = [a.replace("{file}", language.file) for a in language.command]
    if test.kind == "stdio":
        return sandbox.run(argv, files={language.file: program}, stdin=test.stdin, limits=limits), True
    marker = f"distill-tests-done-{secrets.token_hex(16)}"
    source = (f"{program.rstrip()}\n\n{test.code}\n\n"
              f"__import__('os').write(1, b'\\n{marker}\\n')\n")  # to the descriptor: sys.stdout may be replaced
    result = sandbox.run(argv, files={language.file: source}, stdin=None, limits=limits)
    return result, marker in result.stdout


def _normalised(output: str) -> str:
    lines = [line.rstrip() for line in output.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def _failure(test: _Test, result: sandbox.Result, reached: bool, p: CodeParams) -> str | None:
    """Why the test failed, or None when it passed (`reached`: the test code ran to its end)."""
    if result.timed_out:
        return f"timeout after {p.timeout_seconds:g}s"
    if result.killed == "output limit":
        return f"killed: output limit ({p.max_output_bytes} bytes)"
    if result.killed and result.killed.startswith("sandbox error"):
        return result.killed
    if result.killed:
        return f"killed: {result.killed}"
    if result.exit_code != 0:
        last = _last_line(result.stderr)
        if test.kind == "assert" and last.startswith("AssertionError"):
            return f"assertion failed: {_shown(test.code.strip())}"
        return f"exit code {result.exit_code}: {last}"
    if not reached:
        return "the program exited before the test ran to its end"
    if test.kind == "stdio":
        got, want = _normalised(result.stdout), _normalised(test.expected)
        if got != want:
            return f"wrong output (expected {_shown(want)}, got {_shown(got)})"
    return None


def _summary(failures: list[str | None]) -> str:
    """'2/4 tests passed; test 2: ...; tests 3, 4: timeout after 5s': failing tests grouped by why."""
    groups: dict[str, list[int]] = {}
    for number, why in enumerate(failures, 1):
        if why is not None:
            groups.setdefault(why, []).append(number)
    passed = len(failures) - sum(map(len, groups.values()))
    parts = [f"{passed}/{len(failures)} tests passed"]
    for why, numbers in list(groups.items())[:3]:
        listed = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
        parts.append(f"test{'s' if len(numbers) > 1 else ''} {listed}: {why}")
    if len(groups) > 3:
        parts.append(f"{sum(len(n) for n in list(groups.values())[3:])} more failed otherwise")
    return "; ".join(parts)


def _log_missing(result: sandbox.Result) -> None:
    for what in result.missing:
        if what not in _missing_logged:
            _missing_logged.add(what)
            log.warning("code verifier: sandbox isolation not applied: %s", what)


@VERIFIERS.register(
    "code",
    params=CodeParams,
    example="""
verifiers:
  # reference: {"tests": [{"input": "1 2\\n", "output": "3\\n"}]} or {"asserts": ["assert f(1) == 2"]}
  - name: code
    language: python
    timeout_seconds: 5
    memory_mb: 1024
    max_processes: 32
""",
)
def verify_code(completions: list[str], references: list[str | None], params: CodeParams,
                ctx: VerifyContext) -> list[Verdict]:
    """The completion's program passes the reference's tests (stdin/stdout or asserts), run in a sandbox."""
    language, limits = LANGUAGES[params.language], _limits(params)
    verdicts: list[Verdict | None] = []
    plans: list[tuple[str, tuple[_Test, ...]] | None] = []
    for completion, reference in zip(completions, references, strict=True):
        plans.append(None)
        if reference is None or not str(reference).strip():
            verdicts.append(Verdict(None, "no reference"))
            continue
        try:
            tests = _tests(str(reference).strip())
        except BadReference as e:
            verdicts.append(Verdict(None, str(e)))
            continue
        text = completion if isinstance(completion, str) else str(completion or "")
        program = extract_program(text, params.language, params.think_close_tag)
        if program is None:
            verdicts.append(Verdict(0.0, "no program: no non-empty fenced code block"))
            continue
        verdicts.append(None)
        plans[-1] = (program, tests)
    jobs = {(plan[0], test) for plan in plans if plan for test in plan[1]}  # duplicates run once
    workers = params.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-verifier") as pool:
        futures = {job: pool.submit(_run, *job, language, limits) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    for result, _ in results.values():
        _log_missing(result)
    for i, plan in enumerate(plans):
        if plan is None:
            continue
        program, tests = plan
        failures = [_failure(test, *results[(program, test)], params) for test in tests]
        verdicts[i] = Verdict(failures.count(None) / len(tests), _summary(failures))
    return verdicts  # type: ignore[return-value]
