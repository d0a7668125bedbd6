"""eval.probes and gate in a recipe: checked at load, every problem at once; left out of the run
id while unset, so earlier runs keep theirs."""

from __future__ import annotations

from test_load import VALID, hash_of, problems, write

from distill.recipe import load_recipe

STUDENT = """\
student:
  name: s
  base: smollm2-135m-instruct
"""


def test_probes_and_a_gate_load_with_their_parameters(tmp_path):
    recipe = load_recipe(write(tmp_path, VALID + STUDENT + """\
eval:
  probes:
    - name: over-refusal
      limit: 10
    - name: do-not-answer
      label: dna
      risk_areas: [malicious_uses]
gate:
  - {metric: task.pass@1, vs: teacher, min_ratio: 0.95}
  - {metric: dna.refusal_rate, vs: base, max_drop: 0}
  - {metric: over-refusal.over_refusal_rate, vs: base, max_rise: 0.05}
"""))
    assert [p.key for p in recipe.eval.probes] == ["over-refusal", "dna"]
    assert recipe.eval.probes[1].params.risk_areas == ["malicious_uses"]
    assert recipe.gate[0].min_ratio == 0.95
    resolved = recipe.resolved()
    assert resolved["eval"]["probes"][1]["risk_areas"] == ["malicious_uses"]


def test_bad_probes_and_gate_conditions_are_all_reported(tmp_path):
    found = problems(write(tmp_path, VALID + STUDENT + """\
eval:
  probes:
    - name: over-refusl
    - name: harmbench
      colour: red
gate:
  - {metric: task.pass@1, vs: teacher}
  - {metric: task.pass@1, at_least: 0.5, vs: base}
"""))
    assert "unknown probe 'over-refusl'" in found["eval.probes[0].name"]
    assert "did you mean 'over-refusal'" in found["eval.probes[0].name"]
    assert "unknown key" in found["eval.probes[1].colour"]
    assert "exactly one of" in found["gate[0]"]
    assert "fixed bound" in found["gate[1]"]


def test_gate_metrics_must_be_measured_and_labels_unique(tmp_path):
    found = problems(write(tmp_path, VALID + STUDENT + """\
eval:
  probes:
    - name: bias
    - name: bias
gate:
  - {metric: ifbench.prompt_accuracy, vs: base, max_drop: 0.02}
  - {metric: bias.refusal_rate, vs: base, max_drop: 0}
  - {metric: task.accuracy, at_least: 0.5}
"""))
    assert "second probe labelled 'bias'" in found["eval.probes[1]"]
    assert "no probe is labelled 'ifbench'" in found["gate[0].metric"]
    assert "bias measures answer_gap" in found["gate[1].metric"]
    assert "task measures pass@1, pass@k, greedy_accuracy" in found["gate[2].metric"]


def test_a_gate_needs_a_student(tmp_path):
    found = problems(write(tmp_path, VALID + "gate:\n  - {metric: task.pass@1, at_least: 0.5}\n"))
    assert "add a `student:` section" in found["gate"]


def test_unset_probes_and_gate_leave_the_run_id_as_it_was(tmp_path):
    plain = hash_of(tmp_path, VALID + STUDENT)
    assert hash_of(tmp_path, VALID + STUDENT + "eval:\n  probes: []\n  require_teacher_probes: true\ngate: []\n") == plain
    assert hash_of(tmp_path, VALID + STUDENT + "eval:\n  probes:\n    - name: bias\n") != plain
