"""Records -> batches for a whole HF VLM, through the checkpoint's own chat template and processor.

A record's conversation becomes the chat messages the checkpoint was trained on (typed content: each ``<image>`` of a
human turn an ``{"type": "image"}`` item at its place), rendered by ``processor.apply_chat_template``; the processor
expands every image into the family's image tokens and computes its pixels (size, normalisation, dynamic resolution:
whatever the checkpoint's processor does — the collator never touches a pixel). Only answers are learned.

How labels are found without a template-specific mask: for each answer, the template is rendered up to the question
with ``add_generation_prompt=True`` (the prompt) and up to the answer (the full text); the prompt must be a prefix of
the full text and the full text a prefix of the next prompt (true of the LLaVA, Qwen2.5-VL, Gemma 3 and
Idefics3/SmolVLM templates; a template that rewrites earlier turns is refused with a clear error). The piece between
prompt and full text holds the answer and the template's end-of-turn: the answer's tokens and the first special token
after it (``<|im_end|>``, ``<end_of_turn>``, ``<end_of_utterance>``, ``</s>``) are learned; where the template puts no
special token after the answer (llava-hf's template ends an answer with a space), the tokenizer's EOS is appended
and learned, so that every answer has a learned stop. Pieces are tokenized separately, so the prompt that
:meth:`ChatCollator.prompts` builds for generation is token for token the training prefix. A generation record's
(last) answer is its target image as VQ codes, ``<img_start> <code_i> ... <img_end>``, as in the tiny model's
collator.

Records may carry zero, one or several images (``image`` a path, a list of paths or null); the number of ``<image>``
markers in the human turns must equal the number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from components.data.records import IMAGE_TOKEN, record_images
from components.models.collate import answer_codes, as_record, checked_turns, record_task
from components.models.hf.family import Family
from components.models.tokenizer import ImageCodeTokens, image_code_tokens

IGNORE = -100


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]
    images: list[dict[str, Tensor]] = field(default_factory=list)  # processor outputs, in image order
    image_count: int = 0
    last_image_token: int = -1  # index of the last image token (-1: none)
    code_span: tuple[int, int] | None = None


def _messages(turns: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for turn in turns:
        text = str(turn["value"])
        if turn["from"] == "gpt":
            out.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
            continue
        content: list[dict[str, Any]] = []
        for k, part in enumerate(text.split(IMAGE_TOKEN)):
            if k:
                content.append({"type": "image"})
                part = part.removeprefix("\n")
            if part.strip():
                content.append({"type": "text", "text": part.strip()})
        out.append({"role": "user", "content": content})
    return out


class ChatCollator:
    """Callable: records -> a batch (``input_ids``, ``attention_mask``, ``labels``, ``pixel_values`` and the
    family's other image tensors, ``tasks``, ``image_counts``). See the module docstring."""

    def __init__(
        self,
        processor: Any,
        family: Family,
        load_image: Callable[[str], Any],
        *,
        target_codes: Callable[[Mapping[str, Any]], Sequence[int]] | None = None,
        max_length: int = 4096,
        with_features: bool = False,
    ) -> None:
        self.processor = processor
        self.tok = processor.tokenizer
        self.family = family
        self.load_image = load_image
        self.target_codes = target_codes
        self.max_length = max_length
        self.with_features = with_features
        self.image_id = family.image_token_id(processor)
        plain = self._text("x")
        with_specials = list(self.tok("x", add_special_tokens=True)["input_ids"])
        self.prefix = with_specials[: len(with_specials) - len(plain)] if with_specials[-len(plain) :] == plain else []
        self.special_ids = set(self.tok.all_special_ids) | {
            int(i) for i, t in self.tok.added_tokens_decoder.items() if getattr(t, "special", False)
        }
        if self.tok.eos_token_id is None:
            raise ValueError("the checkpoint's tokenizer has no EOS token")
        self.pad = int(self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id)
        self.eos = self._stop_of_template()
        self._codes: ImageCodeTokens | None = None

    # -- pieces -------------------------------------------------------------------------------------------------
    def _render(self, messages: list[dict[str, Any]], prompt: bool) -> str:
        return str(self.processor.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False))

    def _text(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def _stop_of_template(self) -> int:
        """The token that ends an answer: the first special token the template puts after it, else EOS."""
        probe = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "zq"}]}]  # fmt: skip
        prompt, full = self._render(probe[:1], True), self._render(probe, False)
        after = full[len(prompt) :].split("zq", 1)[-1] if full.startswith(prompt) else ""
        return next((t for t in self._text(after) if t in self.special_ids), int(self.tok.eos_token_id))

    def _segment(self, text: str, images: list[Any], first: bool) -> tuple[list[int], dict[str, Tensor] | None]:
        prefix = self.prefix if first and not (self.tok.bos_token and text.startswith(self.tok.bos_token)) else []
        if not images:
            return prefix + self._text(text), None
        out = self.processor(text=[text], images=[images], add_special_tokens=False, return_tensors="pt")
        ids = [int(t) for t in out["input_ids"][0].tolist()]
        return prefix + ids, self.family.segment_images(self.processor, out)

    def code_tokens(self) -> ImageCodeTokens:
        if self._codes is None:
            self._codes = image_code_tokens(self.tok)
        return self._codes

    def _answer_codes(self, record: Mapping[str, Any]) -> list[int]:
        return answer_codes(self.code_tokens(), self.target_codes, record)

    # -- one record ---------------------------------------------------------------------------------------------
    def encode(self, record: Mapping[str, Any], for_generation: bool = False) -> Encoded:
        rid = record.get("id")
        turns = checked_turns(record, for_generation)
        if any(IMAGE_TOKEN in str(t["value"]) for t in turns if t["from"] == "gpt"):
            raise ValueError(f"record {rid}: an answer holds {IMAGE_TOKEN}")
        paths = record_images(record)
        markers = sum(str(t["value"]).count(IMAGE_TOKEN) for t in turns if t["from"] == "human")
        if markers != len(paths):
            raise ValueError(f"record {rid}: {markers} {IMAGE_TOKEN} marker(s) for {len(paths)} image(s)")
        pictures = [self.load_image(p) for p in paths]
        messages = _messages(turns)
        enc = Encoded([], [])
        done, used = "", 0

        def add_prompt(upto: int) -> None:
            nonlocal done, used
            text = self._render(messages[:upto], True)
            if not text.startswith(done):
                raise ValueError(
                    f"record {rid}: the chat template rewrites earlier turns; medtune needs a template whose "
                    "rendering of a conversation extends the rendering of its beginning"
                )
            count = sum(1 for m in messages[:upto] for c in m["content"] if c["type"] == "image") - used
            ids, out = self._segment(text[len(done) :], pictures[used : used + count], first=not done)
            if out is not None:
                enc.images.append(out)
                enc.image_count += count
                hits = [i for i, t in enumerate(ids) if t == self.image_id]
                enc.last_image_token = len(enc.ids) + hits[-1] if hits else enc.last_image_token
            used += count
            enc.ids += ids
            enc.labels += [IGNORE] * len(ids)
            done = text

        for k, turn in enumerate(turns):
            if turn["from"] == "human":
                continue
            add_prompt(k)
            full = self._render(messages[: k + 1], False)
            if not full.startswith(done):
                raise ValueError(f"record {rid}: the chat template's prompt is not a prefix of the full conversation")
            region, answer = full[len(done) :], str(turn["value"]).strip()
            at = region.find(answer)
            if at < 0:
                raise ValueError(f"record {rid}: the chat template changed the answer text of turn {k}")
            before, after = region[:at], region[at + len(answer) :]
            if k == len(turns) - 1 and record.get("task") == "generation":
                start = len(enc.ids) + len(self._text(before.strip()))
                learned = self._text(before.strip()) + self._answer_codes(record)
                enc.code_span = (start, len(enc.ids) + len(learned))
            else:
                learned = self._text(before + answer)
            tail = self._text(after)
            stop = next((j for j, t in enumerate(tail) if t in self.special_ids), None)
            if stop is None:
                learned, masked = [*learned, self.eos], tail
            else:
                learned, masked = learned + tail[: stop + 1], tail[stop + 1 :]
            enc.ids += learned + masked
            enc.labels += learned + [IGNORE] * len(masked)
            done = full
        if for_generation:
            add_prompt(len(turns))
        return enc

    def _fit(self, enc: Encoded, rid: Any) -> Encoded:
        m = self.max_length
        if enc.last_image_token >= m:
            raise ValueError(f"record {rid}: its image tokens end at position {enc.last_image_token + 1}, beyond "
                             f"max_length {m}; raise the model's max length or use fewer/smaller images")  # fmt: skip
        if len(enc.ids) <= m:
            return enc
        if enc.code_span is not None and enc.code_span[1] > m:
            raise ValueError(f"record {rid}: the image-code answer ends at {enc.code_span[1]}, beyond max_length {m}")
        labels = enc.labels[:m]
        if all(x == IGNORE for x in labels):
            raise ValueError(f"record {rid}: the prompt alone fills max_length {m}; nothing of the answer is left")
        return Encoded(enc.ids[:m], labels, enc.images, enc.image_count, enc.last_image_token, enc.code_span)

    def _images(self, encs: Sequence[Encoded]) -> dict[str, Any]:
        outputs = [o for e in encs for o in e.images]
        if not outputs:
            return {"pixel_values": None}
        return self.family.merge_images(outputs)

    # -- batches ------------------------------------------------------------------------------------------------
    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
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
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels, **self._images(encs)}
        batch["tasks"] = [record_task(r) for r in records]
        batch["image_counts"] = torch.tensor([e.image_count for e in encs], dtype=torch.long)
        if self.with_features:
            batch["flix_features"] = [dict(r.get("features") or {}) for r in records]
        return batch

    def prompts(self, records: Sequence[Mapping[str, Any]], task: str | None = None) -> dict[str, Any]:
        """Generation prompts (the conversation without its last answer), left-padded."""
        records = [as_record(r) for r in records]
        encs = [self.encode(r, for_generation=True) for r in records]
        for r, e in zip(records, encs, strict=True):
            if len(e.ids) > self.max_length:
                raise ValueError(
                    f"record {r.get('id')}: the prompt ({len(e.ids)} tokens) exceeds max_length {self.max_length}"
                )
        width = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, width - len(e.ids) :] = torch.tensor(e.ids)
            mask[i, width - len(e.ids) :] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, **self._images(encs)}
        batch["tasks"] = [task or record_task(r) for r in records]
        batch["image_counts"] = torch.tensor([e.image_count for e in encs], dtype=torch.long)
        return batch
