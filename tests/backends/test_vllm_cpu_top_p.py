"""The partial-sort top-p keeps exactly the tokens vLLM's own top-p keeps."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest
import torch

from distill.backends import vllm_cpu_top_p

sampler = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")
VOCAB = 49152  # SmolLM2's


def vllm_top_p():
    f = getattr(sampler, "apply_top_k_top_p_pytorch")
    return getattr(f, "__wrapped__", f)  # vLLM's own, patched or not


def logits_of_every_kind(rows_per_scale: int = 24) -> torch.Tensor:
    """Rows from flat (nucleus of thousands of tokens) to peaked (a token or two)."""
    g = torch.Generator().manual_seed(7)
    scales = [0.3, 1.0, 2.0, 4.0, 8.0, 16.0]
    return torch.cat([torch.randn(rows_per_scale, VOCAB, generator=g) * s for s in scales])


def differing_only_at_the_boundary(ours: torch.Tensor, theirs: torch.Tensor, logits: torch.Tensor,
                                   p: torch.Tensor) -> None:
    """Where the kept sets differ, the token sits on p to float32 rounding: the probability
    above it, computed in float64, is within 1e-5 of p."""
    differ = torch.isfinite(ours) != torch.isfinite(theirs)
    probs = logits.double().softmax(-1)
    for r, c in differ.nonzero().tolist():
        above = probs[r][probs[r] > probs[r, c]].sum().item()
        assert abs(above - p[r].item()) < 1e-5, (r, c, above, p[r].item())
    assert differ.sum() <= 3


@pytest.mark.parametrize("p_value", [0.5, 0.9, 0.95, 0.99])
def test_the_nucleus_is_vllms_for_flat_and_peaked_rows(p_value):
    logits = logits_of_every_kind()
    p = torch.full((logits.shape[0],), p_value)
    theirs = vllm_top_p()(logits.clone(), None, p, allow_cpu_sync=True)
    ours = vllm_cpu_top_p.fast_top_p(vllm_top_p())(logits.clone(), None, p, allow_cpu_sync=True)
    differing_only_at_the_boundary(ours, theirs, logits, p)
    kept = torch.isfinite(ours)
    assert torch.equal(ours[kept], logits[kept])  # kept logits are untouched
    sizes = kept.sum(-1)
    assert sizes.min() >= 1 and sizes.max() > 1024 and sizes.min() < 64  # every level and the fallback ran


def test_rows_settled_at_different_levels_keep_their_place():
    """A batch mixing rows settled by 64 tokens, by 1024, by neither, and with p = 1."""
    logits = logits_of_every_kind(rows_per_scale=5)[torch.randperm(30, generator=torch.Generator().manual_seed(1))]
    p = torch.tensor([0.9, 1.0, 0.95, 0.7, 0.99] * 6)
    theirs = vllm_top_p()(logits.clone(), None, p, allow_cpu_sync=True)
    ours = vllm_cpu_top_p.fast_top_p(vllm_top_p())(logits.clone(), None, p, allow_cpu_sync=True)
    differing_only_at_the_boundary(ours, theirs, logits, p)
    whole = p == 1  # p = 1 keeps every token whose probability is not zero in float32
    assert torch.equal(torch.isfinite(ours[whole]), logits[whole].softmax(-1) > 0)
    assert (p[torch.isfinite(ours).sum(-1) > 1024] < 1).any()  # and some p < 1 rows went to the fallback


def test_top_k_with_top_p_and_top_k_alone_are_left_to_vllm():
    calls = []

    def original(logits, k, p, **kw):
        calls.append((k, p))
        return logits

    fast = vllm_cpu_top_p.fast_top_p(original)
    logits = torch.randn(4, 100)
    k = torch.tensor([5, 5, 5, 5])
    fast(logits, k, torch.full((4,), 0.9))
    fast(logits, k, None)
    assert len(calls) == 2 and all(c[0] is k for c in calls)
    fast(logits, None, torch.full((4,), 0.9))  # settled by partial sorts: vLLM's function not called
    assert len(calls) == 2


def test_the_plugin_patches_vllm_on_cpu_once_and_can_be_turned_off(monkeypatch):
    own = vllm_top_p()
    monkeypatch.setattr(sampler, "apply_top_k_top_p_pytorch", own)
    monkeypatch.setenv(vllm_cpu_top_p.ENV, "0")
    vllm_cpu_top_p.register()
    assert sampler.apply_top_k_top_p_pytorch is own
    monkeypatch.delenv(vllm_cpu_top_p.ENV)
    vllm_cpu_top_p.register()
    patched = sampler.apply_top_k_top_p_pytorch
    assert patched.distill_fast_top_p and patched.__wrapped__ is own
    vllm_cpu_top_p.register()  # vLLM may load plugins more than once in a process
    assert sampler.apply_top_k_top_p_pytorch is patched


def test_vllm_finds_the_plugin():
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="vllm.general_plugins")}
    assert found.get("distill_cpu_top_p") == "distill.backends.vllm_cpu_top_p:register"
    module, _, function = found["distill_cpu_top_p"].partition(":")
    assert getattr(importlib.import_module(module), function) is vllm_cpu_top_p.register
