"""The Qwen2.5-VL family on a tiny random checkpoint: the weights are the file's, medtune's forward and greedy decoding
equal ``Qwen2_5_VLForConditionalGeneration``'s (multimodal RoPE, window attention, several image sizes), HVP's two
levels, the collator against the checkpoint's processor and chat template, and training. Run::

.venv/bin/pytest tests/unit/models/test_hf_qwen2_5_vl.py -q
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn

from components.models.generate import greedy_decode
from components.models.hf import HFVLM
from components.models.hf.collate import IGNORE, _messages
from components.models.hf.qwen2_5_vl import ImageOnlyProcessor
from tests.fixtures.tiny_vlms import build_tiny

torch.set_num_threads(2)

# image sizes (h, w): "big" is 6x6 patches = 3x3 merge units, more than one 2x2-unit attention window, so the
# window permutation inside the vision blocks is not the identity
SIZES = {"big": (48, 48), "wide": (32, 64), "small": (48, 32)}
TOL = 1e-5


def load_image(path: str) -> Image.Image:
    h, w = SIZES[path]
    rng = np.random.default_rng(sum(map(ord, path)))
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def record(rid: str, images: list[str], question: str, answer: str, task: str = "comprehension") -> dict[str, Any]:
    marks = "".join("<image>\n" for _ in images)
    return {
        "id": rid,
        "task": task,
        "image": images or None,
        "conversations": [{"from": "human", "value": marks + question}, {"from": "gpt", "value": answer}],
    }


ONE = record("one", ["big"], "what is this?", "a CT of the chest")
TWO = record("two", ["wide", "small"], "is there a lesion?", "yes, left")
TEXT = record("text", [], "Describe the image.", "The liver and the kidney are visible.")


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "ckpt", tie_word_embeddings=request.param)


@pytest.fixture(scope="module")
def untied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "ckpt")


def load(folder: Path, gen_layer: int = 1) -> HFVLM:
    torch.manual_seed(0)
    return HFVLM.from_checkpoint(folder, gen_layer=gen_layer)


def hf_inputs(model: HFVLM, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the checkpoint's own forward / generate takes it (``mm_token_type_ids`` as its processor makes)."""
    ids = batch["input_ids"]
    out = {"input_ids": ids, "attention_mask": batch["attention_mask"]}
    if batch.get("pixel_values") is not None:
        types = (ids == model.hf_model.config.image_token_id).int()
        out |= {
            "pixel_values": batch["pixel_values"],
            "image_grid_thw": batch["image_grid_thw"],
            "mm_token_type_ids": types,
        }
    return out


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "labels"}


# -- (a) the weights are the checkpoint's ---------------------------------------------------------------------------
def state_name(key: str, state: dict[str, Tensor]) -> str:
    """The loaded model's name of a tensor of the file. Qwen2.5-VL's files keep the published layout (``visual.*``,
    ``model.*`` = the decoder, ``lm_head``); transformers loads it under ``model.visual``, ``model.language_model``."""
    if key in state:
        return key
    if key.startswith("visual."):
        return "model." + key
    return "model.language_model." + key.removeprefix("model.") if key.startswith("model.") else key


def test_every_tensor_equals_the_file_and_sits_in_one_group(checkpoint: Path) -> None:
    model = load(checkpoint)
    hf = model.hf_model
    state = hf.state_dict()
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert saved, "no tensors in the checkpoint file"
    names = {key: state_name(key, state) for key in saved}
    for key, name in names.items():
        assert name in state, f"{key} of the file is not in the loaded model"
        assert torch.equal(state[name], saved[key]), f"{key} differs from the file"
    tied = bool(hf.config.tie_word_embeddings)
    assert len(set(names.values())) == len(names)
    assert set(state) - set(names.values()) == ({"lm_head.weight"} if tied else set())

    hf_params = {id(p): n for n, p in hf.named_parameters()}
    groups: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), set()).add(name.split(".")[0])
    assert all(len(g) == 1 for g in groups.values()), "a parameter sits in two groups"
    own = {id(p): n for n, p in model.named_parameters() if not n.startswith("projectors.generation.")}
    assert set(own) == set(hf_params), "medtune's vision/projector/lm parameters are not exactly the checkpoint's"
    merger = {n.removeprefix("model.visual.merger.") for n in hf_params.values() if ".merger." in n}
    projector = {
        n.removeprefix("projectors.comprehension."): hf_params[i] for i, n in own.items() if n.startswith("projectors.")
    }
    assert set(projector) == merger and all(".visual.merger." in v for v in projector.values())
    assert not any(".merger." in hf_params[i] for i, n in own.items() if n.startswith("vision."))
    generation = dict(model.projectors["generation"].named_parameters())
    for key, p in model.projectors["comprehension"].named_parameters():
        assert torch.equal(generation[key], p) and generation[key].data_ptr() != p.data_ptr()
    emb, head = model.lm.get_input_embeddings().weight, model.lm.get_output_embeddings().weight
    assert (emb is head) is tied
    assert getattr(model.lm.config, "tie_word_embeddings", False) is tied  # what peft and resizing read
    assert emb.shape[0] > len(model.tokenizer), "the tiny checkpoint should pad its vocabulary like Qwen's"


def test_tied_head_stays_tied_when_the_vocabulary_grows(tmp_path: Path) -> None:
    model = load(build_tiny("qwen2_5_vl", tmp_path / "tied", tie_word_embeddings=True))
    rows = model.lm.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings_mean(rows + 3)
    emb, head = model.lm.get_input_embeddings().weight, model.lm.get_output_embeddings().weight
    assert emb.shape[0] == rows + 3 and emb is head


# -- (b) forward == the checkpoint's forward -------------------------------------------------------------------------
def test_forward_equals_the_checkpoints_own(checkpoint: Path) -> None:
    model = load(checkpoint)
    batch = model.collator(load_image)([ONE, TWO, TEXT])
    mask = batch["attention_mask"]
    assert not bool(mask[:, -1].all()) and bool(mask[:, 0].all()), "the batch should be right-padded"
    assert batch["image_grid_thw"].tolist() == [[1, 6, 6], [1, 4, 8], [1, 6, 4]]
    assert batch["image_counts"].tolist() == [1, 2, 0]
    positions = model.position_ids(batch["input_ids"], mask, pixel_values=batch["pixel_values"],
                                   image_grid_thw=batch["image_grid_thw"])  # fmt: skip
    assert positions is not None and positions.shape == (3, *batch["input_ids"].shape)
    plain = (mask.cumsum(1) - 1).clamp(min=0)
    assert not torch.equal(positions[1], plain), "multimodal RoPE positions should differ from plain ones"
    with torch.no_grad():
        ours = model(**batch)
        ref = model.hf_model(**hf_inputs(model, batch), labels=batch["labels"])
    diff = float((ours.logits - ref.logits).abs().max())
    print(f"max |medtune - HF| logits: {diff:.3g}")
    assert diff <= TOL
    assert abs(float(ours.loss) - float(ref.loss)) <= TOL


def test_comprehension_tokens_equal_the_checkpoints_merger_output(untied: Path) -> None:
    model = load(untied)
    batch = model.collator(load_image)([ONE, TWO])
    window_index, _ = model.vision.window_index(batch["image_grid_thw"])
    assert not torch.equal(window_index, torch.arange(len(window_index))), "the window permutation is trivial"
    with torch.no_grad():
        images = {k: batch[k] for k in ("pixel_values", "image_grid_thw")}
        ours = model.image_features(images, ["comprehension"] * 3)
        ref = model.hf_model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    assert float((ours - torch.cat(ref)).abs().max()) <= TOL


def test_text_only_batches_use_plain_positions(untied: Path) -> None:
    model = load(untied)
    batch = model.collator(load_image)([TEXT, record("t2", [], "yes?", "no")])
    assert batch["pixel_values"] is None and "image_grid_thw" not in batch
    with torch.no_grad():
        diff = (model(**batch).logits - model.hf_model(**hf_inputs(model, batch)).logits).abs().max()
    assert float(diff) <= TOL


# -- (c) HVP: the generation projector reads the shallow level -------------------------------------------------------
class _Skip(nn.Module):
    """A vision block that passes its input through (the checkpoint's forward then ends at an earlier level)."""

    def forward(self, hidden_states: Tensor, **kwargs: Any) -> Tensor:
        return hidden_states


def test_generation_reads_the_shallow_level_through_its_own_projector(untied: Path) -> None:
    model = load(untied, gen_layer=1)
    batch = model.collator(load_image)([ONE, TWO])
    gen = {**batch, "tasks": ["generation"] * 2}
    with torch.no_grad():
        com_before, gen_before = model(**batch).logits, model(**gen).logits
        # the reference: the checkpoint's own forward with every block after block 1 skipped, its merger unchanged
        shallow = copy.deepcopy(model.hf_model)
        for i in range(1, len(shallow.model.visual.blocks)):
            shallow.model.visual.blocks[i] = _Skip()
        ref = shallow(**hf_inputs(model, batch)).logits
        assert float((gen_before - ref).abs().max()) <= TOL
        assert float((gen_before - com_before).abs().max()) > 1e-3, "the two levels should give different logits"
        for p in model.projectors["generation"].parameters():
            p.add_(0.05 * torch.randn_like(p))
        com_after, gen_after = model(**batch).logits, model(**gen).logits
    assert torch.equal(com_after, com_before), "the generation projector changed a comprehension forward"
    assert float((gen_after - gen_before).abs().max()) > 1e-3, "the generation projector is not read"


def test_mixed_tasks_in_one_batch_read_their_own_levels(untied: Path) -> None:
    model = load(untied)
    collate = model.collator(load_image)
    mixed = {**collate([ONE, TWO]), "tasks": ["comprehension", "generation"]}
    with torch.no_grad():
        both = model(**mixed).logits
        first = model(**collate([ONE])).logits
        second = model(**{**collate([TWO]), "tasks": ["generation"]}).logits
        assert float((second - model(**collate([TWO])).logits).abs().max()) > 1e-3
    assert float((both[0, : first.shape[1]] - first[0]).abs().max()) <= TOL
    assert float((both[1, : second.shape[1]] - second[0]).abs().max()) <= TOL


# -- (d) the collator is the checkpoint's chat template and processor -------------------------------------------------
def test_collator_equals_the_processors_rendering(untied: Path) -> None:
    model = load(untied)
    processor, tok = model.processor, model.tokenizer
    records = [ONE, TWO, TEXT]
    batch = model.collator(load_image)(records)
    pixels, grids = [], []
    for i, rec in enumerate(records):
        text = processor.apply_chat_template(_messages(rec["conversations"]), tokenize=False)
        images = [load_image(p) for p in rec["image"] or []]
        out = processor(text=[text], images=[images] if images else None, return_tensors="pt")
        length = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :length]
        assert tok.decode(ids) == tok.decode(out["input_ids"][0])
        assert ids.tolist() == out["input_ids"][0].tolist()
        learned = batch["labels"][i][batch["labels"][i] != IGNORE]
        assert tok.decode(learned) == rec["conversations"][1]["value"] + "<|im_end|>"
        if images:
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
    assert torch.equal(batch["pixel_values"], torch.cat(pixels))
    assert torch.equal(batch["image_grid_thw"], torch.cat(grids))


def test_the_folder_is_a_plain_qwen_folder_and_loads_without_torchvision(untied: Path) -> None:
    meta = json.loads((untied / "processor_config.json").read_text())
    assert meta["processor_class"] == "Qwen2_5_VLProcessor"
    model = load(untied)
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        assert isinstance(model.processor, ImageOnlyProcessor)
    assert model.processor.image_processor.patch_size == model.hf_model.config.vision_config.patch_size


def test_a_folder_in_the_published_layout_loads_the_same_processor(untied: Path, tmp_path: Path) -> None:
    """Qwen/Qwen2.5-VL-*-Instruct ship preprocessor_config.json and chat_template.json (no processor_config.json)."""
    import shutil

    folder = tmp_path / "published"
    shutil.copytree(untied, folder)
    nested = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").unlink()
    image = {**nested["image_processor"], "processor_class": "Qwen2_5_VLProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(image))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    new, old = load(folder), load(untied)
    assert new.processor.chat_template == old.processor.chat_template
    a, b = new.collator(load_image)([ONE, TWO, TEXT]), old.collator(load_image)([ONE, TWO, TEXT])
    for key in ("input_ids", "labels", "pixel_values", "image_grid_thw"):
        assert torch.equal(a[key], b[key]), key


def test_save_and_load_keep_the_merger(untied: Path, tmp_path: Path) -> None:
    model = load(untied)
    batch = model.collator(load_image)([ONE])
    with torch.no_grad():
        for p in model.projectors["comprehension"].parameters():
            p.add_(0.01)
        before = model(**batch).logits
        again = HFVLM.load(model.save(tmp_path / "saved"))
        after = again(**batch).logits
    assert torch.equal(before, after)


# -- (e) multi-image and text-only records train ----------------------------------------------------------------------
def test_multi_image_and_text_only_records_train(untied: Path) -> None:
    model = load(untied).train()
    collate = model.collator(load_image)
    batches = [collate([TWO, TEXT]), collate([TEXT])]
    assert batches[0]["image_counts"].tolist() == [2, 0] and batches[1]["pixel_values"] is None
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for p in model.lm.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses: list[list[float]] = [[], []]
    for _ in range(6):
        for i, batch in enumerate(batches):
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[i].append(loss.item())
    assert all(seen[-1] < seen[0] for seen in losses), f"losses {losses}"


# -- (f) greedy decoding == the checkpoint's generate ------------------------------------------------------------------
def test_greedy_decode_equals_hf_generate(untied: Path) -> None:
    model = load(untied)
    collate = model.collator(load_image)
    batch = collate.prompts([ONE, TWO, TEXT])
    mask = batch["attention_mask"]
    assert not bool(mask[:, 0].all()) and bool(mask[:, -1].all()), "the prompts should be left-padded"
    positions = model.position_ids(batch["input_ids"], mask, pixel_values=batch["pixel_values"],
                                   image_grid_thw=batch["image_grid_thw"])  # fmt: skip
    assert positions is not None
    assert (positions[..., -1] + 1 != mask.sum(1)).any(), "the image rows' RoPE deltas should be non-zero"
    with torch.no_grad():
        ours = greedy_decode(model, **batch, max_new_tokens=3, stop_id=collate.eos, pad_id=collate.pad)
        ref = model.hf_model.generate(
            **hf_inputs(model, batch), do_sample=False, max_new_tokens=3, eos_token_id=collate.eos,
            pad_token_id=collate.pad,
        )  # fmt: skip
    assert ours.tolist() == ref[:, batch["input_ids"].shape[1] :].tolist()
