import json

import pytest
from pydantic import ValidationError

from distill.verifiers import VERIFIERS, VerifyContext
from distill.verifiers.code import LANGUAGES, CodeParams, extract_program, verify_code

pytestmark = pytest.mark.timeout(120)

ADD_STDIN = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
ADD_FUNCTION = "```python\ndef add(a, b):\n    return a + b\n```"
SUM_TESTS = json.dumps({"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}]})
ADD_ASSERTS = json.dumps({"asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]})


def fenced(code: str, label: str = "python") -> str:
    return f"```{label}\n{code}\n```"


def stdio(*cases, **keys) -> str:
    body = {"tests": [{"input": i, "output": o} for i, o in cases]} if cases else {}
    return json.dumps({**body, **keys})


def verdict(completion, reference, **params):
    [v] = verify_code([completion], [reference], CodeParams(workers=2, **params), VerifyContext.blank(1))
    return v


@pytest.mark.parametrize(
    "completion, expected",
    [
        (fenced("print(1)"), "print(1)\n"),
        ("Here it is:\n```py\nprint(1)\n```\nDone.", "print(1)\n"),
        (fenced("print(1)", "python3"), "print(1)\n"),
        (fenced("print(1)", "Python"), "print(1)\n"),
        (fenced("print(1)", ""), "print(1)\n"),  # unlabelled
        # A python block wins over a later block in another language.
        (fenced("print(1)") + "\nRun it:\n" + fenced("python main.py", "bash"), "print(1)\n"),
        # The last python block wins: the answer comes after the drafts.
        (fenced("print('draft')") + "\nBetter:\n" + fenced("print('final')"), "print('final')\n"),
        # No python block: the last fenced block, whatever its label.
        (fenced("echo 1", "bash") + "\n" + fenced("print(2)", "text"), "print(2)\n"),
        # Indented fences (in a list item) and a closing fence with trailing spaces.
        ("1. Code:\n   ```python\n   print(1)\n   ```   \n", "print(1)\n"),
        # A fence without a closing line runs to the end (a truncated completion).
        ("```python\nprint(1)\nprint(2)", "print(1)\nprint(2)"),
        # ``` inside a line does not close the block.
        (fenced("s = '```'\nprint(s)"), "s = '```'\nprint(s)\n"),
        # Code drafted while reasoning is not the answer.
        (f"<think>\n{fenced('print(0)')}\n</think>\n{fenced('print(1)')}", "print(1)\n"),
        (f"<think>\n{fenced('print(0)')}\n</think>\nThe answer needs no code.", None),
        (f"<think>\nLet me write\n{fenced('print(0)')}", None),  # reasoning never closed
        ("Just prose, no code.", None),
        ("```python\n```", None),
        (fenced("   \n"), None),
        ("", None),
        ("~~~python\nprint(1)\n~~~", None),  # only backtick fences
    ],
)
def test_extract_program(completion, expected):
    assert extract_program(completion) == expected


def test_extract_program_reads_reasoning_when_asked():
    completion = f"<think>\n{fenced('print(0)')}\n</think>\nNo code."
    assert extract_program(completion, think_close_tag=None) == "print(0)\n"


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        # stdin/stdout tests.
        (ADD_STDIN, SUM_TESTS, 1.0),
        (ADD_STDIN.replace("a + b", "a - b"), SUM_TESTS, 0.0),
        (ADD_STDIN.replace("a + b", "abs(a + b)"), stdio(("1 2", "3"), ("-5 1", "-4")), 0.5),
        (fenced("print('3  ')\nprint()\nprint()"), stdio(("", "3\n")), 1.0),  # trailing whitespace
        (fenced("print('3')"), stdio(("", "3  \r\n\n")), 1.0),
        (fenced("print(' 3')"), stdio(("", "3")), 0.0),  # leading whitespace counts
        (fenced("print('a\\nb')"), stdio(("", "a b")), 0.0),
        (fenced("import sys\nprint(sum(map(int, sys.stdin.read().split())))"),
         stdio(("1 2 3\n4\n", "10"), ("", "0")), 1.0),
        (fenced("print(3)\nraise SystemExit(1)"), stdio(("", "3")), 0.0),  # right output, then a failure
        (fenced("print(1/0)"), SUM_TESTS, 0.0),
        (fenced("def broken(:"), SUM_TESTS, 0.0),
        ("The sum is a + b.", SUM_TESTS, 0.0),  # no program
        # Assert tests: each after the program, alone.
        (ADD_FUNCTION, ADD_ASSERTS, 1.0),
        (ADD_FUNCTION.replace("a + b", "a * b if a == 2 else a + b"), ADD_ASSERTS, 1.0),
        (ADD_FUNCTION.replace("a + b", "a * b"), ADD_ASSERTS, 1 / 3),
        (ADD_FUNCTION.replace("a + b", "a + b + 1"), ADD_ASSERTS, 0.0),
        (fenced("def ad(a, b):\n    return a + b"), ADD_ASSERTS, 0.0),  # NameError
        (ADD_FUNCTION, json.dumps({"test_code": "assert add(1, 2) == 3\nassert add(0, 0) == 0"}), 1.0),
        (ADD_FUNCTION, json.dumps({"test_code": "assert add(1, 2) == 3\nassert add(0, 0) == 1"}), 0.0),
        # A main block runs too, with an empty stdin.
        (fenced("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(1, 2))"), ADD_ASSERTS, 1.0),
        (fenced("def add(a, b):\n    return a + b\nx = input()"), ADD_ASSERTS, 0.0),  # EOFError
        # Both kinds in one reference: 2 stdin tests and 1 assert.
        (fenced("def add(a, b):\n    return a + b\nimport sys\ndata = sys.stdin.read().split()\n"
                "if data:\n    print(add(*map(int, data)))"),
         stdio(("1 2", "3"), ("2 2", "5"), asserts=["assert add(2, 3) == 5"]), 2 / 3),
        # A Python-literal reference: what a prompt file's object field becomes as a string.
        (ADD_STDIN, str({"tests": [{"input": "1 2\n", "output": "3\n"}]}), 1.0),
        # Cannot verify: no usable reference.
        (ADD_STDIN, None, None),
        (ADD_STDIN, "", None),
        (ADD_STDIN, "{}", None),
        (ADD_STDIN, json.dumps({"tests": [], "asserts": []}), None),
        (ADD_STDIN, "3", None),
        (ADD_STDIN, "not json", None),
        (ADD_STDIN, json.dumps({"test": [{"input": "1 2", "output": "3"}]}), None),  # typo'd key
        (ADD_STDIN, json.dumps({"tests": [{"input": "1 2"}]}), None),  # no output
        (ADD_STDIN, json.dumps({"tests": [{"input": "1 2", "output": "3", "expected": "3"}]}), None),
        (ADD_STDIN, json.dumps({"tests": [{"input": 1, "output": "3"}]}), None),
        (ADD_STDIN, json.dumps({"tests": {"input": "1 2", "output": "3"}}), None),
        (ADD_FUNCTION, json.dumps({"asserts": "assert add(1, 2) == 3"}), None),
        (ADD_FUNCTION, json.dumps({"asserts": [""]}), None),
        (ADD_FUNCTION, json.dumps({"test_code": 3}), None),
        ("no program", None, None),  # no reference comes first
    ],
)
def test_code_table(completion, reference, expected):
    score = verdict(completion, reference).score
    assert score is None if expected is None else score == pytest.approx(expected)


@pytest.mark.parametrize(
    "completion, reference, params, reason",
    [
        (ADD_STDIN, SUM_TESTS, {}, "2/2 tests passed"),
        (ADD_STDIN.replace("a + b", "a * b"), SUM_TESTS, {},
         "0/2 tests passed; test 1: wrong output (expected '3', got '2'); test 2: wrong output (expected '6', got '-40')"),
        (fenced("print('x' * 100)"), stdio(("", "y")), {},
         "0/1 tests passed; test 1: wrong output (expected 'y', got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...')"),
        (fenced("while True: pass"), SUM_TESTS, {"timeout_seconds": 1, "cpu_seconds": 10},
         "0/2 tests passed; tests 1, 2: timeout after 1s"),
        (fenced("while True: pass"), stdio(("", "")), {"timeout_seconds": 10, "cpu_seconds": 1},
         "0/1 tests passed; test 1: killed: cpu limit"),
        (fenced("x = bytearray(10 * 2**30)"), stdio(("", "")), {"memory_mb": 256},
         "0/1 tests passed; test 1: killed: memory limit"),
        (fenced("import sys\nwhile True: sys.stdout.write('x' * 4096)"), stdio(("", "")), {"max_output_bytes": 65536},
         "0/1 tests passed; test 1: killed: output limit (65536 bytes)"),
        (fenced("print(undefined)"), SUM_TESTS, {},
         "0/2 tests passed; tests 1, 2: exit code 1: NameError: name 'undefined' is not defined"),
        (ADD_FUNCTION.replace("a + b", "a * b"), ADD_ASSERTS, {},
         "1/3 tests passed; test 1: assertion failed: 'assert add(1, 2) == 3'; "
         "test 2: assertion failed: 'assert add(-1, 1) == 0'"),
        (ADD_FUNCTION, json.dumps({"test_code": "assert add(1, 2) == 4, 'add is off'"}), {},
         "0/1 tests passed; test 1: exit code 1: AssertionError: add is off"),
        # Exiting 0 before the asserts appended after the program does not pass them unrun.
        (fenced("import sys\ndef add(a, b):\n    return a - b\nsys.exit(0)"), ADD_ASSERTS, {},
         "0/3 tests passed; tests 1, 2, 3: the program exited before the test ran to its end"),
        (fenced("import os\ndef add(a, b):\n    return 0\nif __name__ == '__main__':\n    os._exit(0)"),
         json.dumps({"test_code": "assert add(1, 2) == 3"}), {},
         "0/1 tests passed; test 1: the program exited before the test ran to its end"),
        # Output swallowed by the program does not hide that the tests ran.
        (fenced("import io, sys\nsys.stdout = io.StringIO()\ndef add(a, b):\n    return a + b"), ADD_ASSERTS, {},
         "3/3 tests passed"),
        # A stdin/stdout test may exit 0 on its own: its output is what counts.
        (fenced("import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\nsys.exit(0)"), SUM_TESTS, {},
         "2/2 tests passed"),
        ("No code here.", SUM_TESTS, {}, "no program: no non-empty fenced code block"),
        (ADD_STDIN, None, {}, "no reference"),
        (ADD_STDIN, "{}", {}, "reference has no tests"),
        (ADD_STDIN, json.dumps({"test": []}), {}, "reference has unknown key(s) 'test'; allowed: tests, asserts, test_code"),
        (ADD_STDIN, json.dumps({"tests": [{"input": "1"}]}), {}, "reference test 1 has no output string"),
        (ADD_STDIN, "[1, 2]", {}, "reference is not a JSON object with tests, asserts or test_code"),
    ],
)
def test_code_reasons(completion, reference, params, reason):
    assert verdict(completion, reference, **params).reason == reason


def test_many_failures_are_summarised():
    program = fenced("print(int(input()) + 1)")
    reference = stdio(*[(str(i), str(i)) for i in range(7)], ("x", "0"), ("", "0"))
    assert verdict(program, reference).reason == (
        "0/9 tests passed; test 1: wrong output (expected '0', got '1'); "
        "test 2: wrong output (expected '1', got '2'); test 3: wrong output (expected '2', got '3'); "
        "6 more failed otherwise"
    )
    same = stdio(*[("", "1")] * 7)
    assert verdict(fenced("print(0)"), same).reason == (
        "0/7 tests passed; tests 1, 2, 3, 4, 5, ...: wrong output (expected '1', got '0')")


def test_code_batch_keeps_order():
    verdicts = verify_code(
        [ADD_STDIN, "no code", ADD_FUNCTION, ADD_STDIN, ADD_STDIN.replace("+", "-")],
        [SUM_TESTS, SUM_TESTS, ADD_ASSERTS, None, SUM_TESTS],
        CodeParams(workers=2), VerifyContext.blank(5),
    )
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, None, 0.0]


def test_code_registered_with_params():
    entry = VERIFIERS.get("code")  # the documented example is checked for every verifier in test_registered.py
    assert entry.fn is verify_code and entry.params is CodeParams
    assert set(LANGUAGES) == {"python"}
    for bad in ({"timeout": 5}, {"language": "cobol"}, {"workers": 0}, {"memory_mb": 0}, {"timeout_seconds": 0}):
        with pytest.raises(ValidationError):
            CodeParams(**bad)


def test_identical_programs_run_each_test_once(monkeypatch):
    from distill.verifiers import code

    calls = []
    real = code._run
    monkeypatch.setattr(code, "_run", lambda *args: calls.append(args[:2]) or real(*args))
    verdicts = verify_code([ADD_STDIN] * 4, [SUM_TESTS] * 4, CodeParams(workers=2), VerifyContext.blank(4))  # 4 samples, one program
    assert [v.score for v in verdicts] == [1.0] * 4 and len(calls) == 2
