"""The LLaVA family as a whole-VLM base (issue 16): tensors equal the files, the forward equals the checkpoint's own,
pixels and prompt come from the checkpoint's processor and chat template, HVP's generation projector is a copy
reading a shallow level, padded vocabularies, multi-image and text-only records, greedy decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from components.models.hf import HFVLM
from components.models.tokenizer import add_image_code_tokens
from components.training.stages import parameter_groups
from tests.fixtures.tiny_vlms import build_tiny


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("llava", tmp_path_factory.mktemp("llava") / "ckpt", vocab_padding=7)


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    return {
        name: Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
        for name, (h, w) in {"a.png": (40, 40), "b.png": (64, 48), "c.png": (32, 32)}.items()
    }


IMAGES = _images()


def _record(rid: str, image: Any, question: str, answer: str, task: str = "comprehension") -> dict[str, Any]:
    return {"id": rid, "task": task, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}  # fmt: skip


RECORDS = [
    _record("one", "a.png", "<image>\nwhat is this?", "a CT of the chest"),
    _record("two", ["b.png", "c.png"], "<image>\n<image>\nis there a lesion?", "yes"),
    _record("text", None, "what is an MRI?", "a scan"),
]


def test_every_tensor_equals_the_files_and_each_part_is_shared(folder: Path, tmp_path: Path) -> None:
    model = HFVLM.from_checkpoint(folder)
    # what the loaded model holds, written back in the checkpoint's own layout, equals the user's file key for key:
    # a tensor left at random initialisation (a key the loader did not map) cannot pass
    model.save(tmp_path / "base")
    files = load_file(str(folder / "model.safetensors"))
    saved = load_file(str(tmp_path / "base" / "hf" / "model.safetensors"))
    assert set(saved) == set(files) and len(files) >= 40
    for name, tensor in files.items():
        assert torch.equal(saved[name], tensor), name
    assert sum(p.numel() for p in model.hf_model.parameters()) == sum(t.numel() for t in files.values())
    ours = {id(p) for p in model.parameters()}
    theirs = {id(p) for p in model.hf_model.parameters()}
    assert theirs <= ours  # every checkpoint tensor is one of the parts' (the generation copy is extra)
    groups = parameter_groups(model)
    parts = [set(groups["vision"]), set(groups["projector.comprehension"]), set(groups["projector.generation"]),
             set(groups["lm"])]  # fmt: skip
    names = [n for n, _ in model.named_parameters()]
    assert sum(len(p) for p in parts) == len(names) and set().union(*parts) == set(names)
    comp, gen = model.projectors["comprehension"], model.projectors["generation"]
    for (_, a), (_, b) in zip(comp.named_parameters(), gen.named_parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_forward_equals_the_checkpoint_and_inputs_come_from_its_processor(folder: Path) -> None:
    model = HFVLM.from_checkpoint(folder)
    reference = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    collate = model.collator(IMAGES.__getitem__)
    batch = collate(RECORDS)
    # pixels: exactly the processor's, images in record order
    expected = model.processor.image_processor([IMAGES["a.png"], IMAGES["b.png"], IMAGES["c.png"]],
                                               return_tensors="pt")["pixel_values"]  # fmt: skip
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["image_counts"].tolist() == [1, 2, 0]
    # the prompt: the chat template's rendering, expanded by the processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a CT of the chest"}]}]  # fmt: skip
    text = model.processor.apply_chat_template(messages, tokenize=False)
    ids = model.processor(text=[text], images=[IMAGES["a.png"]], return_tensors="pt")["input_ids"][0].tolist()
    keep = batch["attention_mask"][0].bool()
    row, labels = batch["input_ids"][0][keep].tolist(), batch["labels"][0][keep].tolist()
    tok = model.tokenizer
    assert row == [*ids[:-1], tok.eos_token_id, ids[-1]]  # llava-hf's template ends an answer with " ": EOS is added
    learned = [t for t, lab in zip(row, labels, strict=True) if lab != -100]
    assert learned == row[len(ids) - len(tok(" a CT of the chest", add_special_tokens=False)["input_ids"]) - 1 : -1]
    assert tok.decode(learned) == " a CT of the chest</s>"
    with torch.no_grad():
        ours = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i in (0, 1):  # the checkpoint's own forward, one record at a time (its images only)
            start = sum(batch["image_counts"][:i].tolist())
            pixels = batch["pixel_values"][start : start + int(batch["image_counts"][i])]
            ref = reference(input_ids=batch["input_ids"][i : i + 1], attention_mask=batch["attention_mask"][i : i + 1],
                            pixel_values=pixels).logits  # fmt: skip
            assert (ref - ours[i : i + 1]).abs().max().item() <= 1e-5
        ref = reference(input_ids=batch["input_ids"][2:], attention_mask=batch["attention_mask"][2:]).logits
        assert (ref - ours[2:]).abs().max().item() <= 1e-5


def test_generation_reads_a_shallow_level_through_its_own_projector(folder: Path) -> None:
    model = HFVLM.from_checkpoint(folder, gen_layer=1)
    assert model.levels == {"comprehension": (-2,), "generation": (1,)}
    batch = model.collator(IMAGES.__getitem__)(RECORDS[:1])
    batch.pop("labels")
    with torch.no_grad():
        comp = model(**batch).logits
        gen = model(**{**batch, "tasks": ["generation"]}).logits
        assert not torch.allclose(comp, gen)  # another level, same (copied) weights
        for p in model.projectors["generation"].parameters():
            p.add_(0.5)
        assert torch.equal(model(**batch).logits, comp)
        assert not torch.equal(model(**{**batch, "tasks": ["generation"]}).logits, gen)


def test_padded_vocabulary_new_tokens_take_padding_rows_at_the_mean(folder: Path) -> None:
    model = HFVLM.from_checkpoint(folder)
    emb = model.lm.get_input_embeddings().weight
    rows, n = emb.shape[0], len(model.tokenizer)
    assert rows == n + 7  # the fixture pads 7 rows past the tokenizer
    real_mean = emb[:n].detach().float().mean(dim=0)
    add_image_code_tokens(model.tokenizer, 4)  # 6 tokens fit in the padding: nothing grows
    model.resize_token_embeddings_mean(len(model.tokenizer), first_new=n)
    emb = model.lm.get_input_embeddings().weight
    assert emb.shape[0] == rows
    assert torch.allclose(emb[n : n + 6].float(), real_mean.expand(6, -1))
    model2 = HFVLM.from_checkpoint(folder)
    n2 = len(model2.tokenizer)
    add_image_code_tokens(model2.tokenizer, 16)  # 18 tokens: past the padding, grows to exactly n + 18
    model2.resize_token_embeddings_mean(len(model2.tokenizer), first_new=n2)
    assert model2.lm.get_input_embeddings().weight.shape[0] == n2 + 18
    assert model2.lm.get_output_embeddings().weight.shape[0] == n2 + 18
    assert model2.hf_model.get_output_embeddings() is model2.lm.get_output_embeddings()  # saved as computed
    assert model2.hf_model.config.text_config.vocab_size == n2 + 18


def test_multi_image_and_text_only_records_train(folder: Path) -> None:
    torch.manual_seed(0)
    model = HFVLM.from_checkpoint(folder).train()
    batch = model.collator(IMAGES.__getitem__)(RECORDS[1:])
    labels = batch.pop("labels")
    params = [p for p in model.lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.8


def test_greedy_decoding_equals_the_checkpoints_generate(folder: Path) -> None:
    from components.models.generate import greedy_decode

    model = HFVLM.from_checkpoint(folder)
    reference = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    collate = model.collator(IMAGES.__getitem__)
    prompts = collate.prompts(RECORDS[:2])
    ours = greedy_decode(model, **prompts, max_new_tokens=3)
    for i in range(2):
        start = sum(prompts["image_counts"][:i].tolist())
        pixels = prompts["pixel_values"][start : start + int(prompts["image_counts"][i])]
        mask = prompts["attention_mask"][i].bool()
        ids = prompts["input_ids"][i][mask][None]
        out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                 max_new_tokens=3, do_sample=False, min_new_tokens=3)  # fmt: skip
        assert ours[i].tolist() == out[0, ids.shape[1] :].tolist()


def test_multi_image_and_text_only_records_evaluate(folder: Path, tmp_path: Path) -> None:
    import json

    from components.evaluation.report import evaluate_model

    dataset = tmp_path / "vlhealth"
    (dataset / "images").mkdir(parents=True)
    for name, image in IMAGES.items():
        image.save(dataset / "images" / name)
    rows = []
    for split in ("train", "test"):
        for record in RECORDS:
            images = record["image"]
            moved = [f"images/{p}" for p in images] if isinstance(images, list) else images and f"images/{images}"
            rows.append({**record, "id": f"{split}-{record['id']}", "image": moved, "split": split,
                         "kind": "vqa_open", "modality": "CT", "source": "test"})  # fmt: skip
    (dataset / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = HFVLM.from_checkpoint(folder)
    result = evaluate_model(model, dataset, split="test", batch_size=2)
    answered = {row["id"] for row in result.predictions}
    assert answered == {"test-one", "test-two", "test-text"}
    assert "open/recall" in result.metrics
