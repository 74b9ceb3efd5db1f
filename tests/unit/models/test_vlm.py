"""MedVLM (HVP, per-task projectors, vocabulary growth, save/load, local checkpoints) and generation. Run::

.venv/bin/pytest tests/unit/models/test_vlm.py -q
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from components.models.collate import VLMCollator
from components.models.generate import answer_questions, codes_from_tokens, generate_image_codes, greedy_decode
from components.models.tokenizer import add_image_code_tokens, image_code_tokens, train_tokenizer
from components.models.vlm import MedVLM, VLMArgs, build_vlm, merge_patches

torch.set_num_threads(2)

CORPUS = ["USER: What modality is this?\nASSISTANT: CT MRI X-ray", "Is there a lesion? yes no", "Convert to MRI."] * 10
SMALL = VLMArgs(vision_hidden=32, vision_layers=3, vision_heads=2, image_size=32, patch_size=8, lm_hidden=64,
                lm_layers=2, lm_heads=4, lm_intermediate=128, max_positions=128)  # fmt: skip
K = 16  # codebook size in these tests


def new_tokenizer(codes: int = 0) -> PreTrainedTokenizerFast:
    tok = train_tokenizer(CORPUS, vocab_size=400)
    if codes:
        add_image_code_tokens(tok, codes)
    return tok


def new_model(args: VLMArgs = SMALL, codes: int = 0, seed: int = 0) -> MedVLM:
    torch.manual_seed(seed)
    return build_vlm(args, new_tokenizer(codes))


def record(rid: str, question: str, answer: str, task: str = "comprehension") -> dict[str, Any]:
    return {
        "id": rid,
        "image": rid,
        "task": task,
        "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}],
    }


def image_of(model: MedVLM) -> Any:
    """Deterministic per-path pixels, so tests need no files."""

    def load(path: str) -> Tensor:
        g = torch.Generator().manual_seed(sum(map(ord, path)))
        return torch.randn(model.channels, model.image_size, model.image_size, generator=g)

    return load


TARGET = [3, 1, 4, 1, 5, 9, 2, 6]


def batch_for(model: MedVLM, recs: list[dict[str, Any]]) -> Any:
    assert model.tokenizer is not None
    return VLMCollator(model.tokenizer, model.num_image_tokens, image_of(model), target_codes=lambda r: TARGET)(recs)


MIXED = [
    record("a", "What modality is this?", "CT"),
    record("b", "Convert to MRI.", "-", task="generation"),
    record("c", "Is there a lesion?", "yes"),
    record("d", "Convert to MRI.", "-", task="generation"),
]


def test_default_shapes() -> None:
    model = new_model(VLMArgs())
    assert model.num_image_tokens == 64 and model.lm_hidden == 128 and model.channels == 1
    assert set(model.projectors) == {"comprehension", "generation"}
    assert model.lm.get_input_embeddings().weight.shape[0] == len(model.tokenizer)  # type: ignore[arg-type]
    assert model.lm.config.eos_token_id == 3 and model.lm.config.pad_token_id == 0


def test_merge_patches_concatenates_each_block_in_row_major_order() -> None:
    grid = torch.arange(16.0).view(1, 16, 1)  # a 4 x 4 grid of 1-d "features": patch (r, c) holds 4r + c
    merged = merge_patches(grid, 2)
    assert merged.shape == (1, 4, 4)
    assert merged[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert torch.equal(merge_patches(grid, 1), grid)
    assert merge_patches(torch.randn(2, 16, 3), 4).shape == (2, 1, 48)
    with pytest.raises(ValueError, match="cannot merge 3x3 patches of a 16-patch grid"):
        merge_patches(grid, 3)


@pytest.mark.parametrize(("merge", "tokens"), [(1, 16), (2, 4), (4, 1)])
def test_merged_image_tokens_reach_the_lm_and_save_load(merge: int, tokens: int, tmp_path: Path) -> None:
    model = new_model(VLMArgs(**{**SMALL.__dict__, "merge": merge}), codes=K)
    assert model.num_image_tokens == tokens
    assert model.projectors["comprehension"][0].in_features == 32 * merge**2
    batch = batch_for(model, MIXED)
    assert int((batch["input_ids"][0] == model.image_token_id).sum()) == tokens  # type: ignore[index]
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
        after = MedVLM.load(model.save(tmp_path / "m"))(**batch).logits
    torch.testing.assert_close(after, before)


def test_mixed_batch_forward_has_finite_loss() -> None:
    model = new_model(codes=K)
    batch = batch_for(model, MIXED)
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, len(model.tokenizer))  # type: ignore[arg-type]
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for task in ("comprehension", "generation"):
        assert all(p.grad is not None for p in model.projectors[task].parameters())


def layer_outputs(model: MedVLM, pixels: Tensor) -> list[Tensor]:
    """Outputs of every CLIP encoder layer, caught with forward hooks."""
    caught: list[Tensor] = []

    def hook(_m: Any, _i: Any, out: Any) -> None:
        caught.append(out[0] if isinstance(out, tuple) else out)

    handles = [layer.register_forward_hook(hook) for layer in model.vision.encoder.layers]
    try:
        model.vision(pixel_values=pixels)
    finally:
        for h in handles:
            h.remove()
    return caught


@pytest.mark.parametrize(("comp_layer", "gen_layer", "comp_block", "gen_block"), [(-2, 1, 1, 0), (-1, 2, 2, 1)])
def test_hvp_reads_the_configured_layers(comp_layer: int, gen_layer: int, comp_block: int, gen_block: int) -> None:
    """hidden_states[h] is the output of encoder block h - 1; with 3 blocks, -2 is block 1 and 1 is block 0."""
    args = VLMArgs(**{**SMALL.__dict__, "comp_layer": comp_layer, "gen_layer": gen_layer})
    model = new_model(args).eval()
    pixels = torch.randn(4, 1, 32, 32)
    tasks = ["comprehension", "generation", "generation", "comprehension"]
    seen: dict[str, Tensor] = {}
    hooks = [
        model.projectors[t].register_forward_hook(lambda _m, i, _o, t=t: seen.__setitem__(t, i[0]))
        for t in ("comprehension", "generation")
    ]
    with torch.no_grad():
        feats = model.image_features(pixels, tasks)
        blocks = layer_outputs(model, pixels)
        hidden = model.vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    for h in hooks:
        h.remove()
    comp_rows, gen_rows = [0, 3], [1, 2]
    # each projector saw exactly its own examples, from its own level, CLS dropped
    torch.testing.assert_close(seen["comprehension"], blocks[comp_block][comp_rows, 1:])
    torch.testing.assert_close(seen["generation"], blocks[gen_block][gen_rows, 1:])
    assert not torch.allclose(blocks[comp_block], blocks[gen_block])
    with torch.no_grad():
        torch.testing.assert_close(
            feats[comp_rows], model.projectors["comprehension"](hidden[comp_layer][comp_rows, 1:])
        )
        torch.testing.assert_close(feats[gen_rows], model.projectors["generation"](hidden[gen_layer][gen_rows, 1:]))
        # a mixed batch gives each example what a batch of its own task gives
        torch.testing.assert_close(feats[comp_rows], model.image_features(pixels[comp_rows], ["comprehension"] * 2))
    assert feats.shape == (4, model.num_image_tokens, model.lm_hidden)


@pytest.mark.parametrize("task", ["comprehension", "generation"])
def test_each_task_trains_only_its_projector(task: str) -> None:
    model = new_model(codes=K)
    model(**batch_for(model, [r for r in MIXED if r["task"] == task])).loss.backward()
    other = "generation" if task == "comprehension" else "comprehension"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projectors[task].parameters())
    assert all(p.grad is None for p in model.projectors[other].parameters())


def test_bad_layer_index_and_task() -> None:
    with pytest.raises(ValueError, match="comp_layer=4 is outside hidden_states of a 3-layer encoder"):
        new_model(VLMArgs(**{**SMALL.__dict__, "comp_layer": 4}))
    model = new_model()
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['segmentation'\]"):
        model.image_features(torch.randn(1, 1, 32, 32), ["segmentation"])


def test_placeholder_count_is_checked() -> None:
    model = new_model()
    batch = batch_for(model, MIXED[:1])
    ids = batch["input_ids"].clone()
    ids[0, ids[0].tolist().index(model.image_token_id)] = 5
    with pytest.raises(ValueError, match=r"0 or 16 <image> placeholder tokens; got \(row, count\) \[\(0, 15\)\]"):
        model(ids, batch["attention_mask"], batch["pixel_values"], batch["tasks"])


def test_text_only_rows_mix_with_image_rows() -> None:
    """A row without <image> keeps its token embeddings; image rows get their own features (scatter order)."""
    model = new_model().eval()
    text_only = record("t", "Is there a lesion?", "yes")
    text_only["conversations"][0]["value"] = "Is there a lesion?"
    batch = batch_for(model, [text_only, MIXED[0]])
    assert (batch["input_ids"][0] == model.image_token_id).sum() == 0
    with torch.no_grad():
        mixed = model(**batch).logits
        alone = model(**batch_for(model, [MIXED[0]])).logits
    n = alone.shape[1]
    torch.testing.assert_close(mixed[1, :n], alone[0])


def test_new_token_rows_are_the_mean_of_the_old_rows() -> None:
    model = new_model()
    tok = model.tokenizer
    assert tok is not None
    old_in = model.lm.get_input_embeddings().weight.detach().clone()
    old_out = model.lm.get_output_embeddings().weight.detach().clone()
    n = old_in.shape[0]
    add_image_code_tokens(tok, K)
    model.resize_token_embeddings_mean(len(tok))
    new_in = model.lm.get_input_embeddings().weight
    new_out = model.lm.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == n + K + 2 == model.lm.config.vocab_size
    assert torch.equal(new_in[:n], old_in) and torch.equal(new_out[:n], old_out)
    assert torch.equal(new_in[n:], old_in.mean(dim=0).expand(K + 2, -1))
    assert torch.equal(new_out[n:], old_out.mean(dim=0).expand(K + 2, -1))
    model.resize_token_embeddings_mean(n)  # fewer tokens than rows: the vocabulary is never shrunk
    assert model.lm.get_input_embeddings().weight.shape[0] == n + K + 2


def test_tied_embeddings_grow_once() -> None:
    tok = new_tokenizer()
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, tie_word_embeddings=True))  # fmt: skip
    model = new_model()
    model.lm = lm
    old = lm.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings_mean(len(tok) + 3)
    assert model.lm.get_output_embeddings().weight.data_ptr() == model.lm.get_input_embeddings().weight.data_ptr()
    assert torch.equal(model.lm.get_input_embeddings().weight[-3:], old.mean(dim=0).expand(3, -1))


def test_save_load_gives_identical_logits(tmp_path: Path) -> None:
    model = new_model(codes=K).eval()
    batch = batch_for(model, MIXED)
    with torch.no_grad():
        before = model(**batch).logits
    model.save(tmp_path / "vlm")
    assert not list((tmp_path / "vlm").rglob("*.bin")) and not list((tmp_path / "vlm").rglob("*.pt"))
    loaded = MedVLM.load(tmp_path / "vlm")
    assert loaded.args == model.args and loaded.image_token_id == model.image_token_id
    assert loaded.tokenizer is not None and loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()  # type: ignore[union-attr]
    with torch.no_grad():
        after = loaded(**batch).logits
    assert torch.equal(before, after)


def test_load_from_local_checkpoints_grows_the_vocabulary(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = new_tokenizer()
    lm_cfg = LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(lm_cfg).save_pretrained(tmp_path / "lm")
    clip_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=16, num_channels=3)  # fmt: skip
    CLIPVisionModel(clip_cfg).save_pretrained(tmp_path / "clip")
    model = build_vlm(VLMArgs(lm_path=str(tmp_path / "lm"), vision_path=str(tmp_path / "clip")), tok)
    assert (model.lm_hidden, model.num_image_tokens, model.channels) == (48, 4, 3)
    emb = model.lm.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) and torch.equal(emb[300:], emb[:300].mean(dim=0).expand(len(tok) - 300, -1))
    out = model(**batch_for(model, MIXED[:1]))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("field", ["lm_path", "vision_path"])
def test_hub_id_without_local_copy_fails_clearly(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = VLMArgs(**{field: "microsoft/Phi-3-mini-4k-instruct"})
    with pytest.raises(FileNotFoundError, match=f"{field} 'microsoft/Phi-3-mini-4k-instruct' is not a local") as e:
        build_vlm(args, new_tokenizer())
    assert "download it first" in str(e.value) and "pass that local folder" in str(e.value)


def test_missing_local_folder_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        build_vlm(VLMArgs(lm_path=str(tmp_path / "absent")), new_tokenizer())


def train(model: MedVLM, batch: Any, steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_a_few_adamw_steps_lower_the_loss() -> None:
    model = new_model(codes=K)
    losses = train(model, batch_for(model, MIXED), steps=5, lr=1e-3)
    assert losses[-1] < losses[0] - 0.5, losses


def test_overfit_then_generate_text_and_codes() -> None:
    """End to end: what the collator teaches, the generation prompts ask for, token for token."""
    model = new_model(codes=K)
    tok = model.tokenizer
    assert tok is not None
    recs = [record("a", "What modality is this?", "CT"), record("c", "Is there a lesion?", "yes no"), MIXED[1]]
    losses = train(model, batch_for(model, recs), steps=30, lr=5e-3)
    assert losses[-1] < 0.2, losses[-5:]
    answers = answer_questions(model, tok, recs[:2], image_of(model), max_new_tokens=8)
    assert answers == ["CT", "yes no"]
    codes = generate_image_codes(model, tok, recs[2:], image_of(model), num_codes=len(TARGET))
    assert codes.tolist() == [TARGET]
    assert model.training  # generation restores the mode it found


def test_generate_image_codes_count_and_range() -> None:
    model = new_model(codes=K)
    with torch.no_grad():  # break the mean-init symmetry so argmax varies
        model.lm.get_output_embeddings().weight[-K:] += torch.randn(K, model.lm_hidden)
    tok = model.tokenizer
    assert tok is not None
    for n in (1, 9):
        codes = generate_image_codes(model, tok, MIXED, image_of(model), num_codes=n, batch_size=3)
        assert codes.shape == (4, n) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < K


def test_batched_left_padded_decoding_matches_one_by_one_and_a_no_cache_loop() -> None:
    model = new_model().eval()
    tok = model.tokenizer
    assert tok is not None
    recs = [record("a", "What?", "-"), record("b", "Is there a lesion in the left lung?", "-"), record("c", "x", "-")]
    together = answer_questions(model, tok, recs, image_of(model), max_new_tokens=6, batch_size=3)
    alone = [answer_questions(model, tok, [r], image_of(model), max_new_tokens=6)[0] for r in recs]
    assert together == alone
    # the KV-cache loop equals recomputing the whole sequence at each step
    p = VLMCollator(tok, model.num_image_tokens, image_of(model)).prompts(recs[1:2])
    fast = greedy_decode(model, **p, max_new_tokens=5)[0].tolist()
    ids = p["input_ids"]
    with torch.no_grad():
        for _ in range(5):
            logits = model(ids, torch.ones_like(ids), p["pixel_values"], p["tasks"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert fast == ids[0, -5:].tolist()


def test_codes_from_tokens() -> None:
    tok = new_tokenizer(codes=K)
    ct = image_code_tokens(tok)
    good = [7, ct.start, *(ct.codes[c] for c in TARGET), ct.end, tok.eos_token_id]
    assert codes_from_tokens(good, ct, num_codes=len(TARGET)) == TARGET
    assert codes_from_tokens(torch.tensor(good), ct, num_codes=len(TARGET)) == TARGET
    short = [ct.start, *(ct.codes[0] for _ in range(61)), ct.end]
    with pytest.raises(ValueError, match="^expected 64 image codes between <img_start> and <img_end>, got 61$"):
        codes_from_tokens(short, ct, num_codes=64)
    with pytest.raises(ValueError, match="no <img_start>"):
        codes_from_tokens([ct.codes[0]] * 4, ct, num_codes=4)
    with pytest.raises(ValueError, match="got 3 tokens and no <img_end>"):
        codes_from_tokens([ct.start, *ct.codes[:3]], ct, num_codes=4)
    with pytest.raises(ValueError, match=r"non-code tokens \(position, id\) \[\(2, 5\)\]"):
        codes_from_tokens([ct.start, ct.codes[0], 5, ct.end], ct, num_codes=2)


def test_a_pretrained_vision_checkpoint_brings_its_own_normalisation(tmp_path: Path) -> None:
    """model.vision.path: pixels are normalised with the CLIP checkpoint's image_mean / image_std (issue 16), not
    the tiny encoder's 0.5 / 0.5; the values survive save and load."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from components.models.backend import image_loader
    from components.training.data import ImageStore

    clip = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8, num_channels=3)).save_pretrained(clip)  # fmt: skip
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    CLIPImageProcessor(image_mean=mean, image_std=std, size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(clip)  # fmt: skip
    model = build_vlm(VLMArgs(vision_path=str(clip), image_size=32, patch_size=8, channels=3), new_tokenizer())
    assert model.args.image_mean == tuple(mean) and model.args.image_std == tuple(std)
    data = tmp_path / "data"
    data.mkdir()
    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8")
    Image.fromarray(rgb).save(data / "x.png")
    pixels = image_loader(model, ImageStore(data, 32, 3))("x.png")
    expected = (
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]
    ) / torch.tensor(std)[:, None, None]
    assert torch.allclose(pixels, expected, atol=1e-5)
    model.save(tmp_path / "saved")
    assert MedVLM.load(tmp_path / "saved").args.image_mean == tuple(mean)
