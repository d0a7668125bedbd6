"""The licence terms files: every one validates, and every licence licences.md names is there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from distill.licensing import UnknownLicence, load_catalog, shipped
from distill.licensing.terms import HERE, Catalog, Terms, load_file
from distill.prompts import ArithmeticParams
from distill.teachers import catalog as teacher_catalog
from distill.teachers import load_teacher

FILES = sorted(HERE.glob("*.yaml"))

# One id per row of licences.md (hub id, SPDX id, or hub license_name for `other`).
REQUIRED = {
    "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma",
    "qwen", "qwen-research", "tongyi-qianwen", "apache-2.0", "mit", "deepseek", "mrl", "mnpl",
    "nvidia-open-model-license", "openai-api-terms", "anthropic-terms", "gemini-api-terms",
    "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "odc-by",
}


def test_found_the_terms_files():
    assert len(FILES) >= len(REQUIRED)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_terms_file_validates(path: Path):
    terms = load_file(path)
    assert terms.id == path.stem
    if terms.hub is not None and terms.hub.license == "other":
        assert terms.hub.license_name == terms.id and terms.hub.license_link


def test_every_licence_of_licences_md_is_there():
    assert REQUIRED <= set(shipped().ids())


@pytest.mark.parametrize("tid", sorted(teacher_catalog()))
def test_every_shipped_teacher_licence_is_known(tid):
    shipped().get(load_teacher(tid).licence)


def test_generated_prompts_default_licence_is_known():
    shipped().get(ArithmeticParams.model_fields["licence"].default)


def test_unknown_id_suggests_the_closest():
    with pytest.raises(UnknownLicence, match=r"unknown licence 'gema' \(did you mean 'gemma'\?\); known licences: "):
        shipped().get("gema")


def valid() -> dict:
    return yaml.safe_load((HERE / "qwen.yaml").read_text())


BROKEN = [
    ("unknown key", lambda d: d.update(licence_name="qwen")),
    ("unknown nested key", lambda d: d["training"].update(conditon="any")),
    ("other without link", lambda d: d["hub"].pop("license_link")),
    ("same-family without family", lambda d: d["training"].update(condition="same-family")),
    ("non-competing without provider", lambda d: d["training"].update(condition="non-competing")),
    ("unknown role", lambda d: d["obligations"][0].update(applies_to=["student"])),
    ("unknown obligation kind", lambda d: d["obligations"][0].update(kind="vibes")),
    ("obligation without clause", lambda d: d["obligations"][0].pop("clause")),
    ("id not the hub's", lambda d: d.update(id="qwen2")),
    ("api terms with a hub entry", lambda d: d.update(kind="api")),
]


@pytest.mark.parametrize("mutate", [m for _, m in BROKEN], ids=[n for n, _ in BROKEN])
def test_broken_terms_are_rejected(mutate):
    data = valid()
    mutate(data)
    with pytest.raises(ValidationError):
        Terms.model_validate(data)


def test_terms_use_the_shared_strict_base():
    from distill.schema import Strict

    assert issubclass(Terms, Strict)


def test_file_name_must_match_id(tmp_path):
    (tmp_path / "renamed.yaml").write_text((HERE / "qwen.yaml").read_text())
    with pytest.raises(ValueError, match="must match the file name"):
        load_file(tmp_path / "renamed.yaml")


def test_a_private_terms_directory_cannot_redefine_a_shipped_licence(tmp_path):
    (tmp_path / "qwen.yaml").write_text((HERE / "qwen.yaml").read_text())
    with pytest.raises(ValueError, match="defined twice"):
        load_catalog(tmp_path)


def test_aliases_must_not_clash():
    a = Terms.model_validate(valid())
    b = Terms.model_validate({**valid(), "id": "qwen-research", "aliases": ["QWEN"],
                              "hub": {**valid()["hub"], "license_name": "qwen-research"}})
    with pytest.raises(ValueError, match="claimed by"):
        Catalog([a, b])
