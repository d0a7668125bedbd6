"""A recipe's run id is its content hash: code changes must not move an existing run."""

from __future__ import annotations

from pathlib import Path

from distill.recipe import load_recipe

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo" / "smollm2-135m-from-smollm2-135m.yaml"


def demo_without_reproducible(tmp_path, **train) -> Path:
    """The demo as it was before it set sampling.reproducible (and with `train` over its own)."""
    import yaml

    data = yaml.safe_load(DEMO.read_text())
    del data["sampling"]["reproducible"]
    data["train"].update(train)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_demo_recipe_keeps_its_run_id_and_samples_key(tmp_path):
    """Pinned: a change that moves these makes every existing run directory unreachable by a
    rerun (it would start over). Change them only on purpose, and say so in the release notes."""
    recipe = load_recipe(DEMO)
    # a3ab250b8c19: the demo samples reproducibly (sampling.reproducible); its samples come from
    # another batching, hence a new samples key.
    assert recipe.content_hash()[:12] == "a3ab250b8c19"
    assert recipe.samples_key()[:12] == "821cee6991e4"
    # Without that line, the demo's earlier run id and samples key.
    before = load_recipe(demo_without_reproducible(tmp_path))
    assert before.content_hash()[:12] == "fed1dfe71e77"
    assert before.samples_key()[:12] == "65018503d108"


def test_settings_added_at_their_defaults_leave_a_dpo_run_id_as_it_was(tmp_path):
    """preference.sft_steps and learning_rate, sampling.reproducible and the verification section
    came later; unset, the id stays."""
    assert load_recipe(demo_without_reproducible(tmp_path, method="dpo")).content_hash()[:12] == "6fb4c6eac5bf"
