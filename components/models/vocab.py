"""Growing a language model's vocabulary for new tokens, rows at the mean (METHODS.md §1, HealthGPT's image codes).

    grow_vocabulary(lm, len(tokenizer), first_new=len_before_adding)

Checkpoints often ship more embedding rows than their tokenizer has tokens (Qwen2.5 and Phi-3 pad to a multiple of
64 or more). New tokens then take padding rows first: the rows ``[first_new, new_vocab_size)`` are set to the mean
of the real rows ``[0, first_new)`` (input embeddings, untied output head and its bias), and the matrices grow only
when the new tokens run past the padding. The vocabulary is never shrunk: a codebook smaller than the padding keeps
the checkpoint's row count. transformers' ``mean_resizing`` samples around the mean; HealthGPT starts new rows *at*
the mean, which is what is done here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _param(module: nn.Module | None, name: str) -> Tensor | None:
    value = getattr(module, name, None) if module is not None else None
    return value if isinstance(value, Tensor) else None


@torch.no_grad()
def grow_vocabulary(lm: Any, new_vocab_size: int, first_new: int | None = None) -> None:
    """Make ``lm`` hold ``new_vocab_size`` token rows, rows ``[first_new, new_vocab_size)`` at the mean of the rows
    before ``first_new``. ``first_new`` None: the current row count (only rows added by growing are set)."""
    inp = _param(lm.get_input_embeddings(), "weight")
    assert inp is not None
    rows = int(inp.shape[0])
    first = rows if first_new is None else int(first_new)
    if not 0 < first <= rows:
        raise ValueError(f"first new token {first} is outside the model's {rows} embedding rows")
    if new_vocab_size <= first:
        return
    out = _param(lm.get_output_embeddings(), "weight")
    tied = out is not None and out.data_ptr() == inp.data_ptr()
    bias = None if tied else _param(lm.get_output_embeddings(), "bias")
    mean_in = inp[:first].float().mean(dim=0)
    mean_out = out[:first].float().mean(dim=0) if out is not None and not tied else None
    mean_bias = bias[:first].float().mean() if bias is not None else None
    if new_vocab_size > rows:
        lm.resize_token_embeddings(new_vocab_size, mean_resizing=False)
    new_in = _param(lm.get_input_embeddings(), "weight")
    assert new_in is not None
    new_in[first:new_vocab_size] = mean_in.to(new_in.dtype)
    new_out = _param(lm.get_output_embeddings(), "weight")
    if mean_out is not None and new_out is not None:
        new_out[first:new_vocab_size] = mean_out.to(new_out.dtype)
    new_bias = _param(lm.get_output_embeddings(), "bias")
    if mean_bias is not None and new_bias is not None:
        new_bias[first:new_vocab_size] = mean_bias.to(new_bias.dtype)
