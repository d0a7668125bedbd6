"""The vLLM backend renders conversations with tools itself (Ray Data LLM's template stage takes no
per-row tools) through the chosen template, and refuses a template that would drop the tools."""

from __future__ import annotations

import pytest

from distill import chat_templates
from distill.backends.vllm_ray import ToolsNotSupported, VLLMRayBackend
from distill.teachers import Teacher

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PARAMS = {"max_tokens": 8, "seed": 1}


def _backend(tiny_model, template=None) -> VLLMRayBackend:
    teacher = Teacher(id="tiny", model=str(tiny_model), revision="r", licence="apache-2.0", params_b=0.003,
                      template=template)
    return VLLMRayBackend(teacher, {}, seed=0)


def test_plain_questions_go_through_ray_data_llms_own_template_stage(tiny_model):
    backend = _backend(tiny_model)
    assert not backend._needs_rendering([{"work_id": "a", "messages": [{"role": "user", "content": "hi"}]}])
    assert backend.describe()["chat_template"] is None


def test_tools_are_rendered_with_the_chosen_template(tiny_model):
    backend = _backend(tiny_model, "hermes")
    request = {"work_id": "a", "messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": TOOLS,
               "sampling_params": PARAMS}
    assert backend._needs_rendering([request])
    [row] = backend.render([request])
    assert set(row) == {"work_id", "prompt", "sampling_params"}
    assert '"name": "get_weather"' in row["prompt"] and "<tools>" in row["prompt"]
    assert row["prompt"].endswith("<|im_start|>user\nWeather in Rome?<|im_end|>\n<|im_start|>assistant\n")
    assert backend.describe()["chat_template"] == chat_templates.resolve("hermes").label


def test_a_conversation_ending_in_tool_results_is_answered_not_continued(tiny_model):
    backend = _backend(tiny_model, "hermes")
    turns = [{"role": "user", "content": "Weather in Rome?"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
             {"role": "tool", "tool_call_id": "c", "content": "sunny"}]
    [row] = backend.render([{"work_id": "a", "messages": turns, "tools": TOOLS, "sampling_params": PARAMS}])
    assert row["prompt"].endswith("<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_tools_with_a_template_that_drops_them_stop_with_what_to_set(tiny_model):
    backend = _backend(tiny_model)  # SmolLM2's own template has no tools
    request = {"work_id": "a", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "sampling_params": PARAMS}
    with pytest.raises(ToolsNotSupported, match="template: hermes"):
        backend.render([request])
    assert ToolsNotSupported.retryable is False
