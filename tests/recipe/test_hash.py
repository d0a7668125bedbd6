"""A recipe's run id is its content hash: code changes must not move an existing run."""

from __future__ import annotations

from pathlib import Path

from distill.recipe import load_recipe

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo" / "smollm2-135m-from-smollm2-135m.yaml"


def test_the_demo_recipe_keeps_its_run_id_and_samples_key():
    """Pinned: a change that moves these makes every existing run directory unreachable by a
    rerun (it would start over). Change them only on purpose, and say so in the release notes."""
    recipe = load_recipe(DEMO)
    # fed1dfe71e77: the demo gained probes and a gate; its samples key is unchanged, so a rerun
    # starts from the earlier run's samples.
    assert recipe.content_hash()[:12] == "fed1dfe71e77"
    assert recipe.samples_key()[:12] == "65018503d108"


def test_settings_added_at_their_defaults_leave_a_dpo_run_id_as_it_was(tmp_path):
    """preference.sft_steps and learning_rate and the verification section came later; unset, the
    id stays."""
    import yaml

    data = yaml.safe_load(DEMO.read_text())
    data["train"]["method"] = "dpo"
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_recipe(path).content_hash()[:12] == "6fb4c6eac5bf"
