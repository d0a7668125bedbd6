"""Chat templates shipped with distill, for models whose own template cannot render tool use.

A teacher entry, the recipe's teacher or the student names one by its shipped name (`hermes`)
or by the path of a Jinja file; None keeps the model's own template. The template in use is
recorded in every sample's lineage by name and content hash, and the student is saved with the
template it was trained with, so it is served as it learned.

- hermes: ChatML with Hermes-style tool use (the tool definitions in the system turn, calls as
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, results as
  `<tool_response>` blocks), written for SmolLM2's tokens; without tools it renders what
  SmolLM2-Instruct's own template renders. vLLM's `hermes` tool parser reads its calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
NAMES = tuple(sorted(p.stem for p in HERE.glob("*.jinja")))


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # the shipped name, or the file's path as the recipe gave it
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def label(self) -> str:
        """How lineage records it: name and the first 12 hex digits of its hash."""
        return f"{self.name}@{self.sha256[:12]}"

    @property
    def supports_tools(self) -> bool:
        return supports_tools(self.text)


def resolve(name_or_path: str, base_dir: Path | str = ".") -> ChatTemplate:
    """A shipped template by name, else a Jinja file (relative to base_dir). Raises ValueError
    saying what was looked for."""
    if name_or_path in NAMES:
        return ChatTemplate(name_or_path, (HERE / f"{name_or_path}.jinja").read_text())
    path = Path(base_dir) / name_or_path
    if path.is_file():
        return ChatTemplate(name_or_path, path.read_text())
    raise ValueError(f"no chat template {name_or_path!r}: not a shipped one ({', '.join(NAMES)}) and no file "
                     f"{path}; paths are relative to the file that names them")


def supports_tools(template_text: str | None) -> bool:
    """Whether a chat template renders tool definitions: it reads the `tools` variable. A
    template that never mentions it drops the tools silently."""
    return bool(template_text) and "tools" in template_text
