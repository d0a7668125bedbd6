"""The serving config: a good file loads with its paths resolved; a bad one reports every problem
at once, each with its key and what to write; a starting config comes from convert.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from distill.serve.config import ConfigError, load_config, starting_config, write_starting_config

FALLBACK = {"base_url": "http://127.0.0.1:9999/v1", "model": "big-llm", "api_key_env": "UPSTREAM_KEY"}


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def student_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run" / "student"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def test_a_good_config_loads_with_paths_relative_to_it(tmp_path, classifier_file):
    student_dir(tmp_path)
    path = write(tmp_path, {"classifier": "classifier.json", "fallback": FALLBACK,
                            "students": [{"cluster": "c0", "name": "weather", "model": "run/student", "template": "hermes",
                                          "policy": "cascade", "verifier": "tool-call", "min_confidence": 0.3},
                                         {"cluster": "c1", "name": "support", "model": "smollm2-135m-instruct",
                                          "policy": "student"}],
                            "limits": {"max_concurrency": 8}, "log_dir": "logs"})
    config = load_config(path)
    assert config.classifier == str(tmp_path / "classifier.json")
    assert config.students[0].model == str(tmp_path / "run" / "student")
    assert config.students[1].model == "smollm2-135m-instruct"  # a shipped base stays an id
    assert config.log_dir == str(tmp_path / "logs") and config.limits.max_concurrency == 8
    assert config.limits.max_request_bytes == 1_000_000 and config.breaker.failures == 5  # defaults
    assert config.student("c1").name == "support" and config.student("c9") is None


def test_every_schema_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, {"classifer": "x.json",
                            "fallback": {"base_url": "ftp://host", "model": "big", "timeout_seconds": -1},
                            "students": [{"cluster": "c0", "name": "a b", "model": "m", "policy": "smart",
                                          "min_confidence": 2}],
                            "limits": {"max_concurency": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    for expected in [f"{path}: classifer: unknown key (did you mean 'classifier'?)",
                     f"{path}: fallback.base_url: 'ftp://host': must be an http:// or https:// URL",
                     f"{path}: fallback.timeout_seconds: -1:",
                     f"{path}: students[0].name: 'a b':",
                     f"{path}: students[0].policy: 'smart': input should be 'student', 'cascade' or 'llm'",
                     f"{path}: students[0].min_confidence: 2:",
                     f"{path}: limits.max_concurency: unknown key (did you mean 'max_concurrency'?)"]:
        assert expected in text, text
    assert len(e.value.problems) == 7


def test_what_the_files_it_names_must_hold(tmp_path, classifier_file):
    path = write(tmp_path, {"classifier": "classifier.json", "fallback": FALLBACK,
                            "students": [{"cluster": "c7", "name": "a", "model": "no/such/dir", "verifier": "none"},
                                         {"cluster": "c0", "name": "b", "model": "smollm2-135m-instruct",
                                          "template": "chatml-ish"}]})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert "students[0].cluster: 'c7': the classifier never answers it; its clusters: c0, c1" in text
    assert "students[0].model: 'no/such/dir': neither a model directory" in text and "smollm2-135m-instruct" in text
    assert "students[0].verifier: a cascade checks the student's answer: give tool-call or json" in text
    assert "students[1].template: no chat template 'chatml-ish': not a shipped one (hermes)" in text


@pytest.mark.parametrize("data, message", [
    ("fallback: [", "(file): not valid YAML: line 1"),
    ("- a\n- b\n", "(top level): a serving config is a mapping"),
    ({"fallback": FALLBACK, "students": [{"cluster": "c0", "name": "s", "model": "m"}]},
     "students need a classifier to route requests to them"),
    ({"classifier": "nope.json", "fallback": FALLBACK}, "nope.json: no such file; give the file RequestClassifier.save wrote"),
    ({"classifier": "c.json", "fallback": {**FALLBACK, "model": "s"},
      "students": [{"cluster": "c0", "name": "s", "model": "m"}]}, "fallback.model 's' is also a student's name"),
    ({"classifier": "c.json", "fallback": FALLBACK, "students": [{"cluster": "c0", "name": "s", "model": "m"},
                                                                 {"cluster": "c0", "name": "t", "model": "m"}]},
     "two students with cluster 'c0'"),
])
def test_file_level_problems(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value)


def test_a_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="no such file; write one"):
        load_config(tmp_path / "none.yaml")


def test_a_starting_config_from_convert_promotes_what_convert_promoted(tmp_path, classifier_file):
    run_dir = tmp_path / "plan" / "runs" / "weather" / "abc"
    (run_dir / "student").mkdir(parents=True)
    (run_dir / "student" / "config.json").write_text("{}")
    convert = {"kind": "distill usage convert", "clusters": [
        {"id": "c0", "task_type": "tool call", "decision": "promote-student",
         "student": {"name": "weather-smollm2", "run_dir": str(run_dir)}},
        {"id": "c1", "task_type": "classification", "decision": "promote-base", "model": "smollm2-135m-instruct (3-shot)",
         "baselines": [{"model": "smollm2-135m-instruct", "shots": 3, "relative": 0.95}]},
        {"id": "c2", "task_type": "open-ended", "decision": "keep-llm", "model": "gpt-4o"}]}
    (tmp_path / "convert.json").write_text(json.dumps(convert))
    out = tmp_path / "serve.yaml"
    notes = write_starting_config(tmp_path / "convert.json", out, classifier_file, FALLBACK)
    assert any("c1: smollm2-135m-instruct passed 3-shot, but convert.json does not say which examples" in n
               for n in notes)
    assert any(n.startswith("c2: keep-llm") for n in notes)
    config = load_config(out)
    assert [(s.cluster, s.name, s.policy, s.verifier) for s in config.students] == [
        ("c0", "weather-smollm2", "cascade", "tool-call"), ("c1", "smollm2-135m-instruct-c1", "student", "none")]
    assert config.students[0].model == str(run_dir / "student")
    assert out.read_text().startswith(f"# distill serve config, written from {tmp_path / 'convert.json'}")


def test_a_starting_config_needs_a_convert_result(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a convert.json"):
        starting_config(tmp_path / "x.json", "c.json", FALLBACK)


def test_a_base_promoted_few_shot_is_served_with_the_examples_it_passed_with(tmp_path, classifier_file):
    from distill.serve.student import example_turns
    from distill.usage.convert import with_examples

    turns = [{"role": "user", "content": "Refund please"}, {"role": "assistant", "content": "billing"}]
    shots = tmp_path / "plan" / "c1" / "examples-smollm2-135m-instruct-1shot.json"
    shots.parent.mkdir(parents=True)
    shots.write_text(json.dumps(turns))
    convert = {"kind": "distill usage convert", "clusters": [
        {"id": "c1", "task_type": "classification", "decision": "promote-base", "model": "smollm2-135m-instruct (1-shot)",
         "baselines": [{"model": "smollm2-135m-instruct", "shots": 1, "relative": 0.95, "examples": str(shots)}]}]}
    (tmp_path / "convert.json").write_text(json.dumps(convert))
    notes = write_starting_config(tmp_path / "convert.json", tmp_path / "serve.yaml", classifier_file, FALLBACK)
    assert notes == []
    student = load_config(tmp_path / "serve.yaml").students[0]
    assert student.examples == str(shots)
    call = [{"role": "system", "content": "Label the ticket."}, {"role": "user", "content": "My card was charged twice"}]
    assert with_examples(call, example_turns(student)) == [call[0], *turns, call[1]]


def test_an_examples_file_must_hold_user_and_assistant_turns(tmp_path, classifier_file):
    (tmp_path / "shots.json").write_text(json.dumps([{"role": "tool", "content": "x"}]))
    path = write(tmp_path, {"classifier": "classifier.json", "fallback": FALLBACK,
                            "students": [{"cluster": "c1", "name": "support", "model": "smollm2-135m-instruct",
                                          "policy": "student", "examples": "shots.json"},
                                         {"cluster": "c0", "name": "other", "model": "smollm2-135m-instruct",
                                          "policy": "student", "examples": "missing.json"}]})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = {p.key: p.message for p in info.value.problems}
    assert "not a JSON list of user and assistant turns" in found["students[0].examples"]
    assert "missing.json" in found["students[1].examples"]
