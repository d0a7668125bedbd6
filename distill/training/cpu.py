"""Training speed-ups for a CPU: the same losses and gradients as TRL's own path, less work.

Each is a context manager the SFT fit wraps around `trainer.train()`; on a GPU each hands
every call to the library unchanged. docs/cpu.md says why each exists.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def completion_rows_only_head():
    """While training: TRL's fused LM head projects only the positions that have a label, on a CPU too.

    SFTTrainer's loss goes through TRL's fused head (no `[tokens, vocab]` logits), which on
    CUDA/XPU projects only the positions whose label is not -100, and elsewhere every position,
    so that a compiling backend (Neuron) sees one tile shape. In eager PyTorch on a CPU the
    prompt's positions are pure waste: with completion-only loss, a large share of a
    distillation row's tokens, each projected onto the whole vocabulary. The loss, the
    gradients and the logged metrics are the same (tested); docs/performance.md has the gain.

    TRL decides by `trl.trainer.utils._use_triton(device)`, which that module calls for this
    choice only; the wrapper answers yes for CPU devices and leaves the rest to TRL. A TRL
    without the name is left alone.
    """
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not callable(original):
        yield
        return

    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = compact
    try:
        yield
    finally:
        trl_utils._use_triton = original


@contextmanager
def packed_sequences_attend_alone():
    """While training: on a CPU, a padding-free batch's attention runs sequence by sequence.

    With packing (TRL's default "bfd" strategy) the collator flattens the batch into one row
    of every sample end to end, with the sequences' boundaries (`cu_seq_lens_q`) beside it.
    Flash attention takes those boundaries directly; SDPA, the CPU's attention, gets a
    block-diagonal mask over the whole row instead, and computes and masks every pair of
    positions in it, many times the pairs that count when a row holds several samples. Each
    sequence on its own, through SDPA's causal kernel, computes the same (tested) from its own
    pairs only (bench/cpu_packed_attention.py measures the gain).

    The wrapper stands in for transformers' "sdpa" attention function and hands any other
    call to it unchanged: no boundaries (a padded batch), a KV cache, a GPU, or attention that
    is more than causal (a sliding window, soft-capping, attention sinks).
    """
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as functions

    sdpa = functions["sdpa"]

    def plain_causal(module, query, key, bounds, kwargs) -> bool:
        """A padding-free row on a CPU, for attention that is causal and nothing more."""
        if bounds is None or query.device.type != "cpu" or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
            return False
        if int(bounds[-1]) != query.shape[2] or not getattr(module, "is_causal", True):
            return False
        keys = kwargs.get("cu_seq_lens_k")
        if keys is not None and not torch.equal(keys, bounds):
            return False
        # A sliding window, soft-capping, sinks or a bias change what a position sees or weighs:
        # those stay with transformers' mask.
        if any(kwargs.get(name) is not None for name in ("sliding_window", "softcap", "s_aux", "position_bias")):
            return False
        return not kwargs.get("output_attentions") and getattr(module, "sliding_window", None) is None

    def per_sequence(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        bounds = kwargs.get("cu_seq_lens_q")
        if not plain_causal(module, query, key, bounds, kwargs):
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        groups = query.shape[1] // key.shape[1]  # grouped-query attention: each KV head serves `groups` heads
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        edges = bounds.tolist()
        parts = [torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True)
            for a, b in zip(edges, edges[1:]) if b > a]
        return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None

    functions["sdpa"] = per_sequence
    try:
        yield
    finally:
        del functions["sdpa"]  # the local override; the library's own entry shows through again
        if functions["sdpa"] is not sdpa:
            functions["sdpa"] = sdpa
