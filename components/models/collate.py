"""Records (dicts as in ``records.jsonl``) -> model batches, and the prompt format shared with generation.

Chat format (Vicuna-like by default, METHODS.md does not fix one; ``chat_format="phi3_instruct"`` is HealthGPT's,
:data:`CHAT_FORMATS`; a whole HF VLM uses its own chat template instead, :mod:`components.models.hf.collate`)::

    <s>USER: {human turn, its <image> expanded to N placeholder ids}\\nASSISTANT: {answer}</s>

with further turns appended as ``USER: ...\\nASSISTANT: ...</s>``. Only answers are learned: ``labels`` are -100 on
BOS, the USER/ASSISTANT text, the image placeholders and the padding. A generation record's (last) answer is the
target image as VQ codes, ``<img_start> <code_i> ... <img_end></s>``, from the injectable ``target_codes(record)``.
Pieces are tokenized separately (text before ``<image>``, N placeholder ids, text after, each answer), so the
prompt that :mod:`components.models.generate` builds is token-for-token the training prefix.

Usage::

    collate = VLMCollator(tok, model.num_image_tokens, make_image_loader(root, model.image_size, model.channels),
                          target_codes=vq_codes_of_record, max_length=512)
    batch = collate(records)          # input_ids, attention_mask, labels, pixel_values, tasks
    loss = model(**batch).loss

``with_features=True`` (FLix, METHODS.md §3) adds ``flix_features``, each record's ``features`` mapping in batch
order, which the model call hands to the FLix layers (:mod:`components.adapters.flix.features`); leave it off for
other adapters, whose models do not take the keyword.

Padding is on the right for training (:meth:`VLMCollator.prompts` pads on the left for generation). Sequences longer
than ``max_length`` are cut at the right end; it is an error when the image placeholders do not fit, when nothing of
the answer would remain, or when a generation record's code block would be cut (a partial grid would teach the
wrong count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from components.data.records import IMAGE_TOKEN, TASKS
from components.models.tokenizer import ImageCodeTokens, image_code_tokens, token_id

IGNORE = -100
USER = "USER: "
ASSISTANT = "\nASSISTANT: "


@dataclass(frozen=True)
class ChatFormat:
    """A fixed conversation format: ``system`` once before the first user turn, ``user`` before each question,
    ``assistant`` after it; each answer ends with ``end`` (a token of the tokenizer, learned and used as the stop)
    or, when ``end`` is None, with the tokenizer's EOS."""

    system: str = ""
    user: str = USER
    assistant: str = ASSISTANT
    end: str | None = None


# "medtune": the tiny model's Vicuna-like format; "phi3_instruct": HealthGPT's (llava/conversation.py,
# SeparatorStyle.MPT with sep "<|end|>"), for models imported with `medtune import healthgpt`
CHAT_FORMATS = {
    "medtune": ChatFormat(),
    "phi3_instruct": ChatFormat(
        system="<|system|>\nYou are a helpful AI assistant.<|end|>",
        user="\n<|user|>\n",
        assistant="<|end|>\n<|assistant|>\n",
        end="<|end|>",
    ),
}

LoadImage = Callable[[str], Tensor]
TargetCodes = Callable[[Mapping[str, Any]], Sequence[int]]


class Batch(TypedDict):
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    pixel_values: Tensor | None  # None: no record of the batch has an image (text-only records, issue 17)
    tasks: list[str]
    flix_features: NotRequired[list[dict[str, Any]]]  # only with VLMCollator(with_features=True)


class PromptBatch(TypedDict):
    input_ids: Tensor
    attention_mask: Tensor
    pixel_values: Tensor | None  # as in Batch
    tasks: list[str]


def make_image_loader(
    root: str | Path, image_size: int, channels: int, mean: float = 0.5, std: float = 0.5
) -> LoadImage:
    """A loader of ``root / record['image']`` -> float (channels, image_size, image_size), ``(x/255 - mean)/std``.

    Grey images are replicated to 3 channels when ``channels == 3``. Use CLIP's mean/std for a pretrained encoder."""
    base = Path(root)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")

    def load(rel: str) -> Tensor:
        with Image.open(base / rel) as raw:
            img = raw.convert("L" if channels == 1 else "RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr.copy())
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        return (t - mean) / std

    return load


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]
    image_span: tuple[int, int] | None  # [start, end) of the placeholders
    code_span: tuple[int, int] | None  # [start, end) of <img_start> codes <img_end>


class VLMCollator:
    """Callable: list of record dicts -> :class:`Batch`. See the module docstring."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_image_tokens: int,
        load_image: LoadImage,
        target_codes: TargetCodes | None = None,
        max_length: int = 512,
        with_features: bool = False,
        chat_format: str = "medtune",
    ) -> None:
        if chat_format not in CHAT_FORMATS:
            raise ValueError(f"unknown chat format {chat_format!r}; known: {', '.join(CHAT_FORMATS)}")
        self.format = CHAT_FORMATS[chat_format]
        if self.format.end is not None and self.format.end not in tokenizer.get_vocab():
            raise ValueError(f"chat format {chat_format!r} ends answers with {self.format.end!r}: not a token here")
        self.tok = tokenizer
        self.with_features = with_features
        self.n_image = num_image_tokens
        self.load_image = load_image
        self.target_codes = target_codes
        self.max_length = max_length
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token (ensure_vlm_tokens adds it)")
        self.image_id = token_id(tokenizer, IMAGE_TOKEN)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token")
        self.eos = int(tokenizer.eos_token_id) if self.format.end is None else token_id(tokenizer, self.format.end)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._codes: ImageCodeTokens | None = None

    # -- pieces -------------------------------------------------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def _human(self, text: str, first: bool) -> tuple[list[int], tuple[int, int] | None]:
        """Tokens of one user turn up to 'ASSISTANT: ', and the placeholder span relative to its start."""
        bos = [int(self.tok.bos_token_id)] if first and self.tok.bos_token_id is not None else []
        fmt = self.format
        parts = ((fmt.system if first else "") + fmt.user + text + fmt.assistant).split(IMAGE_TOKEN)
        if len(parts) > 2:
            raise ValueError(f"a conversation may hold one {IMAGE_TOKEN}, this turn has {len(parts) - 1}")
        ids = bos + self._text(parts[0])
        if len(parts) == 1:
            return ids, None
        span = (len(ids), len(ids) + self.n_image)
        return ids + [self.image_id] * self.n_image + self._text(parts[1]), span

    def code_tokens(self) -> ImageCodeTokens:
        if self._codes is None:
            self._codes = image_code_tokens(self.tok)
        return self._codes

    def _answer_codes(self, record: Mapping[str, Any]) -> list[int]:
        return answer_codes(self.code_tokens(), self.target_codes, record)

    # -- one record ---------------------------------------------------------------------------------------------
    def encode(self, record: Mapping[str, Any], for_generation: bool = False) -> Encoded:
        """Token ids and labels of one record; ``for_generation`` drops the last answer (the prompt only)."""
        rid = record.get("id")
        turns = checked_turns(record, for_generation)
        ids: list[int] = []
        labels: list[int] = []
        image_span = code_span = None
        for k, turn in enumerate(turns):
            if turn["from"] == "human":
                piece, span = self._human(turn["value"], first=k == 0)
                if span is not None:
                    if image_span is not None:
                        raise ValueError(f"record {rid}: more than one {IMAGE_TOKEN} in the conversation")
                    image_span = (len(ids) + span[0], len(ids) + span[1])
                ids += piece
                labels += [IGNORE] * len(piece)
            else:
                last = k == len(turns) - 1
                if last and record.get("task") == "generation":
                    answer = self._answer_codes(record)
                    code_span = (len(ids), len(ids) + len(answer))
                else:
                    answer = self._text(turn["value"])
                answer.append(self.eos)
                ids += answer
                labels += answer
        return Encoded(ids, labels, image_span, code_span)

    def _fit(self, enc: Encoded, rid: Any) -> Encoded:
        m = self.max_length
        if enc.image_span is not None and enc.image_span[1] > m:
            raise ValueError(
                f"record {rid}: the {self.n_image} image tokens end at position {enc.image_span[1]}, beyond "
                f"max_length {m}; raise max_length or use a coarser image grid"
            )
        if len(enc.ids) <= m:
            return enc
        if enc.code_span is not None and enc.code_span[1] > m:
            raise ValueError(
                f"record {rid}: the image-code answer ends at position {enc.code_span[1]}, beyond max_length {m}; "
                "a cut code grid would teach the wrong count: raise max_length"
            )
        labels = enc.labels[:m]
        if all(x == IGNORE for x in labels):
            raise ValueError(f"record {rid}: the prompt alone fills max_length {m}; nothing of the answer is left")
        return Encoded(enc.ids[:m], labels, enc.image_span, enc.code_span)

    # -- batches ------------------------------------------------------------------------------------------------
    def _pixels(self, records: Sequence[Mapping[str, Any]]) -> Tensor | None:
        """One image per record, stacked in batch order. A text-only record (``image`` null) gets zeros that the
        model never reads (its row holds no placeholders: MedVLM.embed_inputs); None when no record has an image."""
        loaded = [self.load_image(r["image"]) if r.get("image") is not None else None for r in records]
        like = next((t for t in loaded if t is not None), None)
        if like is None:
            return None
        return torch.stack([t if t is not None else torch.zeros_like(like) for t in loaded])

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        records = [as_record(r) for r in records]
        encs = [self._fit(self.encode(r), r.get("id")) for r in records]
        width = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), width), self.pad, dtype=torch.long)
        labels = torch.full((len(encs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
            mask[i, : len(e.ids)] = 1
        batch = Batch(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            pixel_values=self._pixels(records),
            tasks=[record_task(r) for r in records],
        )
        if self.with_features:  # the keyword of components.adapters.flix.FEATURES_KWARG
            batch["flix_features"] = [dict(r.get("features") or {}) for r in records]
        return batch

    def prompts(self, records: Sequence[Mapping[str, Any]], task: str | None = None) -> PromptBatch:
        """Generation prompts (the conversation without its last answer), left-padded; ``task`` overrides each
        record's task (e.g. "generation" to ask any record for an image)."""
        records = [as_record(r) for r in records]
        encs = [self.encode(r, for_generation=True) for r in records]
        for r, e in zip(records, encs, strict=True):
            if e.image_span is not None and e.image_span[1] > self.max_length:
                raise ValueError(
                    f"record {r.get('id')}: the prompt's image tokens do not fit max_length {self.max_length}"
                )
        width = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, width - len(e.ids) :] = torch.tensor(e.ids)
            mask[i, width - len(e.ids) :] = 1
        return PromptBatch(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=self._pixels(records),
            tasks=[task or record_task(r) for r in records],
        )


def as_record(record: Any) -> Mapping[str, Any]:
    """Accept a plain dict or a ``components.data.records.Record``."""
    if isinstance(record, Mapping):
        return record
    to_json = getattr(record, "to_json", None)
    if callable(to_json):
        return dict(to_json())
    raise TypeError(f"a record must be a dict or a Record, got {type(record).__name__}")


def checked_turns(record: Mapping[str, Any], for_generation: bool = False) -> list[Mapping[str, Any]]:
    """A record's turns, human first and alternating; for training the last is the answer, for generation the
    last answer is dropped (the prompt only)."""
    rid = record.get("id")
    turns = list(record["conversations"])
    if not turns or turns[0]["from"] != "human":
        raise ValueError(f"record {rid}: conversations must start with a human turn")
    if for_generation and turns[-1]["from"] == "gpt":
        turns = turns[:-1]
    if [t["from"] for t in turns] != (["human", "gpt"] * len(turns))[: len(turns)]:
        raise ValueError(f"record {rid}: turns must alternate human, gpt")
    if not for_generation and turns[-1]["from"] != "gpt":
        raise ValueError(f"record {rid}: the last turn must be the answer (gpt) for training")
    return turns


def record_task(record: Mapping[str, Any]) -> str:
    """A record's task (default comprehension), checked against :data:`TASKS`."""
    task = str(record.get("task", "comprehension"))
    if task not in TASKS:
        raise ValueError(f"record {record.get('id')}: unknown task {task!r}; known: {', '.join(TASKS)}")
    return task


def answer_codes(codes: ImageCodeTokens, target_codes: TargetCodes | None, record: Mapping[str, Any]) -> list[int]:
    """A generation record's answer: ``<img_start>``, the token of each of its target image's VQ codes,
    ``<img_end>`` (HealthGPT's generation path, METHODS.md §1)."""
    if target_codes is None:
        raise ValueError(f"record {record.get('id')}: a generation record needs target_codes(record)")
    values = [int(c) for c in target_codes(record)]
    bad = [c for c in values if not 0 <= c < codes.codebook_size]
    if bad:
        raise ValueError(f"record {record.get('id')}: codes {bad[:5]} outside the codebook [0, {codes.codebook_size})")
    return [codes.start, *(codes.codes[c] for c in values), codes.end]
