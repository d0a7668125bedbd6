"""The price table: a logged model found by its name or the longest prefix, unknown models
unpriced, and a bad table refused with every problem named."""

import pytest

from distill.usage.prices import SHIPPED, PriceError, load_prices


@pytest.mark.parametrize("model, priced_as", [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longer name wins
    ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
    ("gpt-4oo", None),  # a prefix counts only up to a "-"
    ("acme-llm-70b", None),
    (None, None),
])
def test_a_logged_model_is_found_by_name_or_prefix(model, priced_as):
    assert load_prices().find(model) == priced_as


def test_costs_per_million_tokens_and_none_for_an_unknown_model():
    prices = load_prices()
    assert prices.source == str(SHIPPED)
    assert prices.cost("gpt-4o", 1_000_000, 100_000) == pytest.approx(2.5 + 1.0)
    assert prices.cost("acme-llm-70b", 1000, 1000) is None


def test_a_user_table_replaces_the_shipped_one(tmp_path):
    (tmp_path / "p.yaml").write_text("models:\n  acme-llm-70b: {input: 0.2, output: 0.2}\n")
    prices = load_prices(tmp_path / "p.yaml")
    assert prices.cost("acme-llm-70b", 10**6, 10**6) == pytest.approx(0.4) and prices.find("gpt-4o") is None


@pytest.mark.parametrize("text, messages", [
    ("models:\n  a: {input: 1}\n  b: {input: -1, output: 2}\n  c: {input: 1, output: 2}\n",
     ["models.a: {'input': 1}", "models.b: {'input': -1, 'output': 2}"]),
    ("prices: {}\n", ["no `models` mapping"]),
    ("models: [\n", ["cannot be read as YAML"]),
])
def test_a_bad_table_is_refused_with_every_problem(tmp_path, text, messages):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PriceError) as e:
        load_prices(tmp_path / "p.yaml")
    assert all(m in str(e.value) for m in messages), str(e.value)


def test_a_missing_table_names_the_shipped_one(tmp_path):
    with pytest.raises(PriceError, match=f"no such file; give a price table \\(the shipped one is {SHIPPED}\\)"):
        load_prices(tmp_path / "nope.yaml")
