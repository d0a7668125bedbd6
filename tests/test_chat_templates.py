"""The shipped chat templates: hermes renders tool use for SmolLM2's tokens, and without tools
renders exactly what SmolLM2's own template renders."""

from __future__ import annotations

import json

import pytest

from distill import chat_templates

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def hermes():
    return chat_templates.resolve("hermes")


def test_hermes_is_shipped_and_named_with_its_hash(hermes):
    assert "hermes" in chat_templates.NAMES
    assert hermes.label == f"hermes@{hermes.sha256[:12]}"
    assert hermes.supports_tools


def test_an_unknown_template_says_what_was_looked_for(tmp_path):
    with pytest.raises(ValueError, match=r"no chat template 'nope.jinja'.*hermes"):
        chat_templates.resolve("nope.jinja", tmp_path)
    (tmp_path / "mine.jinja").write_text("{{ messages[0].content }}")
    assert chat_templates.resolve("mine.jinja", tmp_path).text == "{{ messages[0].content }}"


def test_smollm2s_own_template_has_no_tools(tokenizer):
    assert not chat_templates.supports_tools(tokenizer.chat_template)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_without_tools_hermes_renders_what_smollm2_renders(tokenizer, hermes, messages, generation_prompt):
    own = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                         chat_template=hermes.text)
    assert ours == own


def test_tools_calls_and_results_render_in_hermes_form(tokenizer, hermes):
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_0", "content": '{"temp_c": 3}'}]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True,
                                         chat_template=hermes.text)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert json.dumps(TOOLS[0]) in system  # the definition, in full, inside <tools>
    # The empty-content call turn renders, its arguments string as given.
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n' \
           '</tool_call><|im_end|>' in text
    assert '<|im_start|>user\n<tool_response>\n{"temp_c": 3}\n</tool_response><|im_end|>\n' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_none_valued_tool_fields_read_as_absent(tokenizer, hermes):
    """Rows read back from Parquet carry every key of the message type, None where unused."""
    plain = [{"role": "user", "content": "Hi", "tool_calls": None, "tool_call_id": None},
             {"role": "assistant", "content": "Hello!", "tool_calls": None, "tool_call_id": None}]
    bare = [{k: v for k, v in m.items() if v is not None} for m in plain]
    render = lambda ms: tokenizer.apply_chat_template(ms, tokenize=False, chat_template=hermes.text)  # noqa: E731
    assert render(plain) == render(bare)


def test_the_assistant_mask_covers_exactly_what_the_model_writes(tokenizer, hermes):
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    out = tokenizer.apply_chat_template(messages, tools=TOOLS, chat_template=hermes.text, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    written = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert written == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
