"""Training tokens/s of the train stage on a CPU when a packed (padding-free) batch's attention
runs one sequence at a time, against transformers' SDPA over the whole flattened row with a
block-diagonal mask: the same data, model and settings, one process per side; only
`packed_sequences_attend_alone` differs (the baseline side swaps it for a no-op). Losses are
printed so that a reader sees both sides trained the same.

The demo's data (about eight ~117-token samples per 4 x 256-token step):

    python bench/cpu_packed_attention.py --dataset runs/demo-arithmetic/<run-id>/dataset/train.parquet

Without --dataset: synthetic rows as in bench/sft_throughput.py (fewer, longer samples per row).
"""

from __future__ import annotations

from sft_throughput import one_change

if __name__ == "__main__":
    one_change(__doc__, "packed_sequences_attend_alone", ("one-masked-row", "per-sequence"))
