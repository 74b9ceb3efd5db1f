"""Collator: records -> batches (placeholders, labels, padding, codes, truncation) and the image loader. Run::

.venv/bin/pytest tests/unit/models/test_collate.py -q
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from components.data.records import Record
from components.models.collate import IGNORE, VLMCollator, make_image_loader
from components.models.tokenizer import add_image_code_tokens, image_code_tokens, train_tokenizer

N = 16  # placeholder tokens per image in these tests
K = 8  # codebook size


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    t = train_tokenizer(["USER: What modality is this?\nASSISTANT: CT MRI yes no", "Convert to MRI."] * 10, 400)
    add_image_code_tokens(t, K)
    return t


def record(rid: str, question: str, answer: str, task: str = "comprehension", **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "image": f"img/{rid}.png",
        "task": task,
        "kind": "vqa_open" if task == "comprehension" else "modality_conversion",
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        **extra,
    }


def fake_image(path: str) -> torch.Tensor:
    return torch.full((1, 8, 8), float(len(path)))


def codes_of(rec: Any) -> list[int]:
    return [i % K for i in range(6)]


def make(tok: PreTrainedTokenizerFast, **kw: Any) -> VLMCollator:
    return VLMCollator(tok, N, fake_image, target_codes=codes_of, **kw)


def text_ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_comprehension_batch_layout(tok: PreTrainedTokenizerFast) -> None:
    recs = [record("a", "<image>\nWhat modality is this?", "CT"), record("b", "<image>\nyes?", "no it is not")]
    batch = make(tok)(recs)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids.shape == labels.shape == mask.shape and ids.dtype == torch.long
    assert (ids == image_id).sum(dim=1).tolist() == [N, N]
    assert batch["pixel_values"].shape == (2, 1, 8, 8)
    assert batch["tasks"] == ["comprehension", "comprehension"]
    for i, rec in enumerate(recs):
        answer = text_ids(tok, rec["conversations"][1]["value"]) + [tok.eos_token_id]
        length = int(mask[i].sum())
        assert mask[i, :length].all() and not mask[i, length:].any()  # right padding
        assert (ids[i, length:] == tok.pad_token_id).all()
        learned = labels[i] != IGNORE
        assert labels[i][learned].tolist() == answer  # only the answer (and its EOS) is learned
        assert learned.nonzero().flatten().tolist() == list(range(length - len(answer), length))
        assert ids[i, length - len(answer) : length].tolist() == answer
        assert ids[i, 0] == tok.bos_token_id
    prompt = tok.decode(ids[0, : int(mask[0].sum())].tolist())
    assert prompt == "<s>USER: " + "<image>" * N + "\nWhat modality is this?\nASSISTANT: CT</s>"


def test_generation_record_answers_with_codes(tok: PreTrainedTokenizerFast) -> None:
    recs = [record("g", "<image>\nConvert to MRI.", "(image)", task="generation"), record("c", "<image>\nx", "CT")]
    batch = make(tok)(recs)
    codes = image_code_tokens(tok)
    learned = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    assert learned == [codes.start, *(codes.codes[c] for c in codes_of(None)), codes.end, tok.eos_token_id]
    assert batch["tasks"] == ["generation", "comprehension"]


def test_generation_without_target_codes_or_with_bad_codes(tok: PreTrainedTokenizerFast) -> None:
    rec = record("g", "<image>\nConvert", "x", task="generation")
    with pytest.raises(ValueError, match="needs target_codes"):
        VLMCollator(tok, N, fake_image)([rec])
    with pytest.raises(ValueError, match=r"codes \[8\] outside the codebook \[0, 8\)"):
        VLMCollator(tok, N, fake_image, target_codes=lambda r: [1, 8])([rec])


def test_prompts_are_the_training_prefix_left_padded(tok: PreTrainedTokenizerFast) -> None:
    recs = [record("a", "<image>\nWhat modality is this?", "CT"), record("b", "<image>\nyes?", "no")]
    collate = make(tok)
    train = collate(recs)
    prompts = collate.prompts(recs)
    for i in range(2):
        answer_len = int((train["labels"][i] != IGNORE).sum())
        length = int(train["attention_mask"][i].sum())
        prefix = train["input_ids"][i, : length - answer_len].tolist()
        plen = int(prompts["attention_mask"][i].sum())
        width = prompts["input_ids"].shape[1]
        assert not prompts["attention_mask"][i, : width - plen].any()  # left padding
        assert prompts["input_ids"][i, width - plen :].tolist() == prefix
        assert prefix[-1] != tok.eos_token_id  # the prompt never ends with EOS (STACK §2f)
    assert collate.prompts(recs, task="generation")["tasks"] == ["generation", "generation"]


def test_multi_turn_learns_every_answer(tok: PreTrainedTokenizerFast) -> None:
    rec = record("m", "<image>\nWhat modality?", "CT")
    rec["conversations"] += [{"from": "human", "value": "yes?"}, {"from": "gpt", "value": "no"}]
    batch = make(tok)([rec])
    learned = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    assert learned == text_ids(tok, "CT") + [tok.eos_token_id] + text_ids(tok, "no") + [tok.eos_token_id]
    assert tok.decode(batch["input_ids"][0].tolist()).endswith("CT</s>USER: yes?\nASSISTANT: no</s>")


def test_truncation_cuts_the_answer_end(tok: PreTrainedTokenizerFast) -> None:
    rec = record("t", "<image>\nWhat?", "CT MRI yes no " * 5)
    full = make(tok)([rec])["input_ids"].shape[1]
    batch = make(tok, max_length=full - 3)([rec])
    assert batch["input_ids"].shape[1] == full - 3
    assert (batch["labels"][0] != IGNORE).any()


def test_truncation_errors(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match=r"the 16 image tokens end at position \d+, beyond max_length 12"):
        make(tok, max_length=12)([record("a", "<image>\nWhat?", "CT")])
    prompt_len = len(make(tok).encode(record("a", "<image>\nWhat?", "CT"), for_generation=True).ids)
    with pytest.raises(ValueError, match="the prompt alone fills max_length"):
        make(tok, max_length=prompt_len)([record("a", "<image>\nWhat?", "CT")])
    with pytest.raises(ValueError, match="a cut code grid would teach the wrong count"):
        make(tok, max_length=prompt_len + 3)([record("g", "<image>\nWhat?", "x", task="generation")])


def test_bad_conversations(tok: PreTrainedTokenizerFast) -> None:
    rec = record("x", "<image>\n<image>\nTwo?", "no")
    with pytest.raises(ValueError, match="one <image>, this turn has 2"):
        make(tok)([rec])
    rec = record("y", "<image>\nq", "a")
    rec["conversations"] = rec["conversations"][::-1]
    with pytest.raises(ValueError, match="must start with a human turn"):
        make(tok)([rec])
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        make(tok)([record("z", "<image>\nq", "a", task="segmentation")])


def test_accepts_record_objects(tok: PreTrainedTokenizerFast) -> None:
    rec = record("src/1", "<image>\nWhat modality?", "CT")
    obj = Record(
        **{k: v for k, v in rec.items()},
        source="src",
        license="CC0-1.0",
        image_sha256="0" * 64,
        modality="CT",
        body_part="brain",
        group="p1",
        split="train",
    )
    a, b = make(tok)([rec]), make(tok)([obj])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_image_loader(tmp_path: Path) -> None:
    pixels = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(pixels, mode="L").save(tmp_path / "x.png")
    grey = make_image_loader(tmp_path, image_size=16, channels=1)("x.png")
    assert grey.shape == (1, 16, 16) and grey.dtype == torch.float32
    torch.testing.assert_close(grey[0], torch.from_numpy(pixels / 255.0 * 2 - 1).float(), atol=1e-6, rtol=0)
    rgb = make_image_loader(tmp_path, image_size=8, channels=3)("x.png")
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[2])
    assert float(rgb.min()) >= -1.0 and float(rgb.max()) <= 1.0
