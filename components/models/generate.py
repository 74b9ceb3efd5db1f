"""Greedy, batched generation with a KV cache: text answers and image codes (METHODS.md §1, generation path).

Usage::

    answers = answer_questions(model, tok, records, load_image, max_new_tokens=16)      # list[str]
    codes = generate_image_codes(model, tok, records, load_image, num_codes=64)        # (B, 64) code indices
    images = vq.decode(codes.view(-1, 8, 8))                                           # the VQ tokenizer's decoder
    codes = codes_from_tokens(free_running_ids, image_code_tokens(tok), num_codes=64)  # parse + count check

The loop is our own (prefill on ``inputs_embeds`` with the image features spliced in, then one token at a time
through the LM's KV ``cache``) so that constraints are exact: prompts are left-padded with position ids from
the attention mask, decoding is argmax (temperature 0, as the safety benchmark and VQA scoring want), and
:func:`generate_image_codes` appends ``<img_start>`` to every prompt, then allows only the K code tokens for exactly
``num_codes`` steps: the count is right by construction. The collator's template makes the prompts, so they match
training token for token. Image-code generation always uses the generation task (shallow HVP level, generation
projector), whatever the record's task says. Each chunk is decoded inside
``components.adapters.flix.use_features`` with its records' ``features`` (the generation task forced for images),
so a FLix model composes every example's adapters in every decoding step; other models ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from components.models.collate import LoadImage
from components.models.tokenizer import ImageCodeTokens, image_code_tokens


@torch.no_grad()
def greedy_decode(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    pixel_values: Tensor | None,
    tasks: list[str],
    max_new_tokens: int,
    allowed_ids: Sequence[int] | None = None,
    stop_id: int | None = None,
    pad_id: int = 0,
    **images: Any,
) -> Tensor:
    """Greedy continuation of left-padded prompts -> (B, T) new token ids, T <= max_new_tokens.

    ``allowed_ids`` restricts every step's argmax to those tokens; after ``stop_id`` a row yields ``pad_id``; the
    loop ends early once every row has stopped. ``images`` are the collator's other image keys (``image_counts``,
    a family's grid sizes ...). Positions come from the model where its family has its own (Qwen2.5-VL's 3-D
    multimodal RoPE), else from the attention mask; each new token continues every row at its last position + 1."""
    device = next(model.lm.parameters()).device
    input_ids, mask = input_ids.to(device), attention_mask.to(device)
    images = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in images.items()}
    pixels = None if pixel_values is None else pixel_values.to(device)
    embeds = model.embed_inputs(input_ids, pixels, tasks, **images)
    family_positions = None
    if pixels is not None:
        extra = {k: v for k, v in images.items() if k != "image_counts"}
        family_positions = model.position_ids(input_ids, mask, pixel_values=pixels, **extra)
    positions = family_positions if family_positions is not None else (mask.cumsum(dim=1) - 1).clamp(min=0)
    allowed = None
    if allowed_ids is not None:
        allowed = torch.full((model.lm.get_output_embeddings().weight.shape[0],), float("-inf"), device=device)
        allowed[torch.tensor(list(allowed_ids), device=device)] = 0.0
    prefill: dict[str, Any] = {"attention_mask": mask, "position_ids": positions}
    family = getattr(model, "family", None)
    if family is not None:  # a family's own LM arguments, e.g. Gemma 3's bidirectional image mask
        prefill.update(family.lm_kwargs(model, input_ids, embeds, mask, prefill))
    out = model.lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **prefill)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    steps: list[Tensor] = []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if allowed is not None:
            logits = logits + allowed[: logits.shape[-1]]
        nxt = logits.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        steps.append(nxt)
        if stop_id is not None:
            done |= nxt == stop_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[..., -1:] + 1  # (B, 1), or (3, B, 1) for 3-D RoPE
        out = model.lm(
            inputs_embeds=model.lm.get_input_embeddings()(nxt[:, None]),
            attention_mask=mask,
            position_ids=positions,
            cache=out.cache,
            use_cache=True,
        )
    if not steps:
        return input_ids.new_zeros(input_ids.shape[0], 0)
    return torch.stack(steps, dim=1)


def _batches(records: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def _features(records: Sequence[Mapping[str, Any]], task: str | None = None) -> Any:
    """The FLix per-example features of a chunk for every LM call of its decoding loop (METHODS.md §3)."""
    from components.adapters.flix.features import use_features  # lazy: peft is only needed with adapters

    rows = [dict(r.get("features") or {}) for r in records]
    return use_features([{**row, "task": task} for row in rows] if task else rows)


class _Eval:
    """Put a model in eval mode for a block and restore its mode after."""

    def __init__(self, model: Any) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def answer_questions(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, Any]],
    load_image: LoadImage,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[str]:
    """Greedy text answers to each record's (last) question; EOS ends an answer, special tokens are dropped."""
    collate = model.collator(load_image, max_length=max_length)
    answers: list[str] = []
    with _Eval(model):
        for chunk in _batches(records, batch_size):
            batch = collate.prompts(chunk)
            with _features(chunk):
                new = greedy_decode(
                    model, **batch, max_new_tokens=max_new_tokens, stop_id=collate.eos, pad_id=collate.pad
                )
            for row in new.tolist():
                if collate.eos in row:
                    row = row[: row.index(collate.eos)]
                answers.append(str(tokenizer.decode(row, skip_special_tokens=True)).strip())
    return answers


def generate_image_codes(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, Any]],
    load_image: LoadImage,
    num_codes: int,
    batch_size: int = 16,
    max_length: int | None = None,
) -> Tensor:
    """(B, num_codes) VQ code indices in ``[0, K)``: ``<img_start>`` forced, then only code tokens, ``num_codes``
    steps. Reshape to the VQ grid for the decoder."""
    if num_codes < 1:
        raise ValueError(f"num_codes must be positive, got {num_codes}")
    codes = image_code_tokens(tokenizer)
    collate = model.collator(load_image, max_length=max_length)
    index = torch.full((max(codes.codes) + 1,), -1, dtype=torch.long)
    index[torch.tensor(codes.codes)] = torch.arange(codes.codebook_size)
    chunks: list[Tensor] = []
    with _Eval(model):
        for chunk in _batches(records, batch_size):
            batch = collate.prompts(chunk, task="generation")
            start = torch.full((batch["input_ids"].shape[0], 1), codes.start, dtype=torch.long)
            ids = torch.cat([batch["input_ids"], start], dim=1)
            mask = torch.cat([batch["attention_mask"], torch.ones_like(start)], dim=1)
            with _features(chunk, task="generation"):
                rest = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
                new = greedy_decode(
                    model, ids, mask, max_new_tokens=num_codes, allowed_ids=codes.codes, pad_id=collate.pad, **rest
                )
            chunks.append(index[new.cpu()])
    out = torch.cat(chunks, dim=0)
    if out.shape[1] != num_codes or bool((out < 0).any()):
        raise RuntimeError(f"constrained decoding produced {tuple(out.shape)} codes; expected (B, {num_codes})")
    return out


def codes_from_tokens(token_ids: Sequence[int] | Tensor, code_token_ids: ImageCodeTokens, num_codes: int) -> list[int]:
    """Parse free-running output: the code indices between the first ``<img_start>`` and the next ``<img_end>``.

    Raises ValueError when a marker is missing, a non-code token sits inside, or the count is not ``num_codes``."""
    ids = token_ids.tolist() if isinstance(token_ids, Tensor) else [int(t) for t in token_ids]
    if code_token_ids.start not in ids:
        raise ValueError("no <img_start> in the generated tokens: the model did not start an image")
    begin = ids.index(code_token_ids.start) + 1
    try:
        end = ids.index(code_token_ids.end, begin)
    except ValueError:
        raise ValueError(
            f"expected {num_codes} image codes between <img_start> and <img_end>, got {len(ids) - begin} tokens and "
            "no <img_end>"
        ) from None
    index = code_token_ids.code_index()
    inner = ids[begin:end]
    strays = [(begin + k, t) for k, t in enumerate(inner) if t not in index]
    if strays:
        raise ValueError(f"non-code tokens (position, id) {strays[:5]} between <img_start> and <img_end>")
    if len(inner) != num_codes:
        raise ValueError(f"expected {num_codes} image codes between <img_start> and <img_end>, got {len(inner)}")
    return [index[t] for t in inner]
