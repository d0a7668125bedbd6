"""The bottom layer's shared records: the strict base every file-backed model uses, a verifier's
verdict, a licence acknowledgement, and the Parquet schemas of what a run writes (prompts,
samples, filter decisions, dataset, evaluation).

Everything that reads what a user wrote (recipes, teacher entries, licence terms, component
parameters) derives from `Strict`, so an unknown key is an error everywhere, never ignored.
The schemas are the run directory's file formats; distill/run.py reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


# What distill writes beside a student's weights: its revision, licence and size. A local model
# directory with it (a student made by distill) says what it is when used as a base.
STUDENT_META_FILE = "distill.json"


class Strict(BaseModel):
    """A model whose unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one completion: a score in [0, 1], or None for "cannot verify"
    (no reference, nothing parsable), which is kept and counted, never coerced to 0 or 1."""

    score: float | None
    reason: str = ""


class Acknowledgement(Strict):
    """An explicit, recorded decision to go ahead despite a refusal; it names the rule it overrides."""

    rule: str = Field(min_length=1, description="the refused rule's id, e.g. 'llama3.1:name-prefix'")
    reason: str = Field(min_length=1, description="why it is acceptable: a written permission, an internal-only model, ...")


PROMPT_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("split", pa.string()),
    ("question", pa.string()),
    ("reference", pa.string()),
    ("source", pa.string()),
    ("source_licence", pa.string()),
    # Conversation prompts (null for a question): the OpenAI-format turns ending in the one to
    # answer, the tool definitions sent with them (both JSON), and the source's category.
    ("messages", pa.string()),
    ("tools", pa.string()),
    ("category", pa.string()),
])

VERDICT = pa.struct([
    ("verifier", pa.string()),
    ("score", pa.float64()),  # null: the verifier could not verify
    ("reason", pa.string()),
    ("required", pa.bool_()),
    ("passed", pa.bool_()),
])

SAMPLE_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("run_id", pa.string()),
    ("recipe_hash", pa.string()),
    ("code_version", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt_text", pa.string()),
    ("prompt_source", pa.string()),
    ("prompt_licence", pa.string()),
    ("reference", pa.string()),
    ("messages", pa.string()),  # JSON: exactly the chat turns sent to the teacher
    ("tools", pa.string()),  # JSON: the tool definitions sent with them; null: none
    ("chat_template", pa.string()),  # the template that rendered them (name@sha256 prefix); null: the model's own
    ("teacher_id", pa.string()),
    ("teacher_model", pa.string()),
    ("teacher_revision", pa.string()),
    ("teacher_licence", pa.string()),
    ("backend", pa.string()),
    ("backend_version", pa.string()),
    ("engine_args", pa.string()),  # JSON: the engine's arguments as the backend resolved them
    ("replica", pa.string()),  # the engine replica that generated it (Ray actor, process, node); null if unknown
    ("sample_index", pa.int32()),
    ("seed", pa.int64()),
    ("sampling_params", pa.string()),  # JSON: every parameter the engine received
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("max_tokens", pa.int32()),
    ("completion", pa.string()),
    # JSON: the tool calls in the completion, [{"name", "arguments"}] (the server's, or parsed from
    # the text); null: none, or the text does not parse as calls.
    ("tool_calls", pa.string()),
    ("finish_reason", pa.string()),  # stop | length | error
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("error", pa.string()),
    ("verdicts", pa.list_(VERDICT)),
    ("accepted", pa.bool_()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])

DECISION = pa.struct([
    ("filter", pa.string()),
    ("flagged", pa.bool_()),
    ("action", pa.string()),  # passed | dropped | marked | redacted
    ("reason", pa.string()),
    ("category", pa.string()),
])
DECISIONS_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("kept", pa.bool_()),
    ("completion", pa.string()),  # the text that goes on: redacted where a filter rewrote it
    ("decisions", pa.list_(DECISION)),
])

# A chat turn as TRL's conversational format and chat templates take it (OpenAI's shape; the
# arguments of a call are a JSON object text).
TOOL_CALL = pa.struct([
    ("id", pa.string()),
    ("type", pa.string()),
    ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
])
MESSAGE = pa.struct([
    ("role", pa.string()),
    ("content", pa.string()),
    ("tool_calls", pa.list_(TOOL_CALL)),  # null on turns without calls
    ("tool_call_id", pa.string()),  # a tool turn: the call it answers
])
DATASET_SCHEMA = pa.schema([
    ("prompt", pa.list_(MESSAGE)),
    ("completion", pa.list_(MESSAGE)),
    ("tools", pa.string()),  # JSON: the tool definitions the prompt offers; null: none
    ("sample_id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt_source", pa.string()),
    ("prompt_licence", pa.string()),
    ("teacher_id", pa.string()),
    ("teacher_licence", pa.string()),
    ("flags", pa.list_(pa.string())),  # the filters that marked (not dropped) this row
])

PROBE_ANSWER_SCHEMA = pa.schema([
    ("role", pa.string()),  # teacher | base | student
    ("model_id", pa.string()),
    ("model_revision", pa.string()),
    ("probe", pa.string()),  # the probe's label in the recipe
    ("item_id", pa.string()),
    ("request_index", pa.int32()),  # an item may hold several requests (a bias pair holds two)
    ("work_id", pa.string()),
    ("seed", pa.int64()),
    ("completion", pa.string()),
    ("finish_reason", pa.string()),
    ("completion_tokens", pa.int32()),
    ("error", pa.string()),
])

EVAL_SCHEMA = pa.schema([
    ("role", pa.string()),  # teacher | student
    ("model_id", pa.string()),
    ("model_revision", pa.string()),
    ("prompt_id", pa.string()),
    ("kind", pa.string()),  # sampled | greedy
    ("sample_index", pa.int32()),
    ("seed", pa.int64()),
    ("completion", pa.string()),
    ("finish_reason", pa.string()),
    ("completion_tokens", pa.int32()),
    ("error", pa.string()),
    ("verdicts", pa.list_(VERDICT)),
    ("correct", pa.bool_()),
])

# The teacher's top-k log-probabilities of each sample's generated tokens (sampling.logprobs),
# one row per sample, in samples/logprobs/ beside the samples part of the same name. Arrays are
# packed little-endian binary. Token ids: uint16 (id_bytes 2, when every id of the row fits) or
# uint32 (4). Log-probabilities: fixed point, LOGPROB_SCALE units per nat, clamped to
# [LOGPROB_FLOOR, 0] nats and stored negated as uint16; a position's top-k as the first (the
# largest) then each one's drop from the one before, which compresses far better. A generated
# token is named by its place in the top-k when it is there with the same log-probability (most
# are); only the others are stored whole. distill/training/logits.py encodes and decodes them.
LOGPROB_SCALE = 512
LOGPROB_FLOOR = -32.0
NOT_IN_TOP_K = 255
LOGPROBS_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("k", pa.uint8()),  # top log-probabilities per position
    ("tokens", pa.int32()),  # generated positions
    ("id_bytes", pa.uint8()),  # 2 or 4
    ("token_ranks", pa.binary()),  # [tokens] uint8: each generated token's place in the top-k, or NOT_IN_TOP_K
    ("token_ids", pa.binary()),  # [tokens NOT_IN_TOP_K]: those generated ids, in order
    ("token_logprobs", pa.binary()),  # [tokens NOT_IN_TOP_K]: the teacher's log-probability of each, negated
    ("top_ids", pa.binary()),  # [tokens, k]: the teacher's k most likely ids, most likely first
    ("top_logprobs", pa.binary()),  # [tokens, k]: the first negated, then the drops
], metadata={b"logprob_scale": str(LOGPROB_SCALE).encode(), b"logprob_floor": str(LOGPROB_FLOOR).encode()})
