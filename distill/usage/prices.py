"""What logged calls cost: a price table (USD per million input and output tokens, per model)
read from YAML, the shipped one (prices.yaml beside this module) or the user's own.

A model that is not in the table has no price: its cost is unknown and is reported so, never
guessed from a similar name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

SHIPPED = Path(__file__).with_name("prices.yaml")


class PriceError(Exception):
    """The price table cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Prices:
    source: str
    per_million: dict[str, tuple[float, float]]  # model -> (input, output) USD per million tokens

    def find(self, model: str | None) -> str | None:
        """The table's name for a logged model: itself, or the longest name it starts with up to a '-'."""
        if not model:
            return None
        name = model.rpartition("/")[2]  # "openai/gpt-4o": the provider is not part of the price
        if name in self.per_million:
            return name
        prefixes = [m for m in self.per_million if name.startswith(m + "-")]
        return max(prefixes, key=len) if prefixes else None

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these tokens, or None when the model has no price."""
        name = self.find(model)
        if name is None:
            return None
        cost_in, cost_out = self.per_million[name]
        return (prompt_tokens * cost_in + completion_tokens * cost_out) / 1e6


def load_prices(path: str | Path | None = None) -> Prices:
    """The shipped table, or the one at `path`; PriceError lists every bad entry at once."""
    path = Path(path) if path else SHIPPED
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PriceError(f"{path}: no such file; give a price table (the shipped one is {SHIPPED})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PriceError(f"{path}: cannot be read as YAML ({e})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise PriceError(f"{path}: no `models` mapping; write `models: {{MODEL: {{input: USD, output: USD}}}}` "
                         f"(per million tokens), as in {SHIPPED}")
    table, problems = {}, []
    for model, entry in models.items():
        keys = set(entry) if isinstance(entry, dict) else set()
        values = [entry.get(k) for k in ("input", "output")] if isinstance(entry, dict) else []
        if keys != {"input", "output"} or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                                  for v in values):
            problems.append(f"{path}: models.{model}: {entry!r}; give {{input: USD, output: USD}} per million tokens, "
                            "both numbers >= 0")
        else:
            table[str(model)] = (float(values[0]), float(values[1]))
    if problems:
        raise PriceError("\n".join(problems))
    return Prices(str(path), table)
