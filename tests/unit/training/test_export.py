"""`medtune export` formats on tiny random models (issue 20, item 3): peft adapters on the user's base reproduce the
pipeline model's logits exactly (every adapter kind; the tiny LM and a whole LLaVA VLM with an image), a merged LoRA
folder loads with plain Transformers in a fresh process that cannot import medtune, H-LoRA refuses to merge, and the
``hf`` folder is the model with its trained tensors in place."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from components.adapters.flix import use_features
from components.models.vq import VQTokenizer
from components.training.export import ExportError, export_trained
from components.training.plugins import AdapterArgs, load_trained, prepare_model, save_trained
from components.training.stages import parameter_groups
from tests.fixtures.tiny_vlms import FAMILIES, build_tiny

FEATURES = {"modality": ["CT", "MRI"]}
KINDS = ("lora", "hlora", "elalora", "flix")


def _trained_folder(base: Path, vq_dir: Path, out: Path, kind: str) -> Path:
    """What the stages leave, without training: the plugins, projectors, embeddings and head moved by seeded noise
    (LoRA's B starts at zero, so an untouched plugin would prove nothing)."""
    torch.manual_seed(0)
    vq = VQTokenizer.load(vq_dir)
    adapter = AdapterArgs(kind=kind, rank=4, generation_rank=8, num_experts=2, dropout=0.0,
                          feature_values=FEATURES if kind == "flix" else {})  # fmt: skip
    model = prepare_model(base, codebook_size=vq.config.codebook_size, adapter=adapter)
    groups = parameter_groups(model)
    moved = {n for g in ("plugin.comprehension", "plugin.generation", "projector.comprehension",
                         "projector.generation", "embeddings", "head") for n in groups[g]}  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in moved and p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.05)
    folder = save_trained(model, out, base_dir=base, extra={"stages": ["1", "2", "3"]})
    shutil.copytree(vq_dir, folder / "vq")
    return folder


def _ids(model: Any) -> torch.Tensor:
    """Text and image-code tokens (the rows stage 2 trains, past the base's vocabulary)."""
    tok = model.tokenizer
    ids = tok("Is there a lesion? <img_start>", add_special_tokens=False)["input_ids"]
    codes = [tok.convert_tokens_to_ids(f"<img_{i}>") for i in range(3)]
    codes = [c for c in codes if isinstance(c, int) and c != tok.unk_token_id] or [len(tok) - 1]
    return torch.tensor([[*ids, *codes]])


def _features(kind: str) -> Any:
    import contextlib

    return use_features([{"modality": "CT"}]) if kind == "flix" else contextlib.nullcontext()


def _pipeline_logits(folder: Path, task: str, ids: torch.Tensor, kind: str) -> torch.Tensor:
    model = load_trained(folder)
    model.lm.set_adapter(task)
    with torch.no_grad(), _features(kind):
        return model.lm(input_ids=ids).logits


@pytest.mark.parametrize("kind", KINDS)
def test_peft_adapters_on_the_base_reproduce_the_logits_exactly(
    kind: str, toy_base: Path, toy_vq: Path, tmp_path: Path
) -> None:
    folder = _trained_folder(toy_base, toy_vq, tmp_path / "model", kind)
    out = export_trained(folder, tmp_path / "peft", "peft")
    info = json.loads((out / "export.json").read_text())
    assert info["needs_medtune"] is (kind != "lora")
    ids = _ids(load_trained(folder))
    for task in ("comprehension", "generation"):
        config = json.loads((out / task / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == info["base"] == str((out / "base").resolve())
        assert config["peft_type"] == kind.upper()
        assert set(config["modules_to_save"]) == {"model.embed_tokens", "lm_head"}
        base = AutoModelForCausalLM.from_pretrained(info["base"])
        base.resize_token_embeddings(info["vocab_rows"])
        exported = PeftModel.from_pretrained(base, str(out / task)).eval()
        with torch.no_grad(), _features(kind):
            got = exported(input_ids=ids).logits
        assert torch.equal(got, _pipeline_logits(folder, task, ids, kind)), task
        # the saved adapter holds the trained rows, not the base's
        saved = load_file(str(out / task / "adapter_model.safetensors"))
        assert any(k.endswith("embed_tokens.weight") for k in saved) and any("lm_head" in k for k in saved)


def test_peft_adapters_name_the_users_checkpoint(toy_base: Path, toy_vq: Path, tmp_path: Path) -> None:
    folder = _trained_folder(toy_base, toy_vq, tmp_path / "model", "lora")
    out = export_trained(folder, tmp_path / "peft", "peft", base="/models/my-llm")
    config = json.loads((out / "comprehension" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/models/my-llm"
    assert not (out / "base").exists()


_NO_MEDTUNE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("components", "pipelines", "medtune", "tests"):
            raise ImportError(f"{name} is not importable here")
sys.meta_path.insert(0, Block())
for name in ("components", "pipelines", "medtune"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} imported")
import torch
from safetensors.torch import load_file, save_file
import transformers
folder, inputs, out = sys.argv[1:4]
cls = getattr(transformers, sys.argv[4])
model = cls.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(**load_file(inputs)).logits
save_file({"logits": logits.contiguous()}, out)
"""


def _plain_transformers_logits(folder: Path, inputs: dict[str, torch.Tensor], cls: str, tmp: Path) -> torch.Tensor:
    """Logits of ``folder`` loaded by ``cls`` in a fresh isolated interpreter where medtune cannot be imported."""
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp / "inputs.safetensors"))
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _NO_MEDTUNE, str(folder), str(tmp / "inputs.safetensors"),
         str(tmp / "logits.safetensors"), cls],
        capture_output=True, text=True, timeout=300, cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(str(tmp / "logits.safetensors"))["logits"]


@pytest.mark.parametrize("kind", ["lora", "elalora"])
def test_merged_loads_with_plain_transformers_without_medtune(
    kind: str, toy_base: Path, toy_vq: Path, tmp_path: Path
) -> None:
    folder = _trained_folder(toy_base, toy_vq, tmp_path / "model", kind)
    out = export_trained(folder, tmp_path / "merged", "merged", task="comprehension")
    assert not list(out.glob("adapter_*")) and (out / "config.json").is_file()
    ids = _ids(load_trained(folder))
    if kind == "lora":  # a fresh interpreter costs ~15 s on 2 busy cores: once per backend is enough
        got = _plain_transformers_logits(out, {"input_ids": ids}, "AutoModelForCausalLM", tmp_path)
    else:
        with torch.no_grad():
            got = AutoModelForCausalLM.from_pretrained(str(out)).eval()(input_ids=ids).logits
    want = _pipeline_logits(folder, "comprehension", ids, kind)
    # merging adds B A into W: the same function, summed in another order
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["hlora", "flix"])
def test_merged_refuses_input_dependent_methods(kind: str, toy_base: Path, toy_vq: Path, tmp_path: Path) -> None:
    folder = _trained_folder(toy_base, toy_vq, tmp_path / "model", kind)
    with pytest.raises(ExportError, match="cannot be merged") as info:
        export_trained(folder, tmp_path / "merged", "merged")
    assert "\n" not in str(info.value)
    assert ("router" in str(info.value)) is (kind == "hlora")
    assert not (tmp_path / "merged").exists()


def test_hf_folder_is_the_model_with_its_trained_tensors(toy_base: Path, toy_vq: Path, tmp_path: Path) -> None:
    folder = _trained_folder(toy_base, toy_vq, tmp_path / "model", "hlora")
    out = export_trained(folder, tmp_path / "hf", "hf")
    ids = _ids(load_trained(folder))
    lm = AutoModelForCausalLM.from_pretrained(str(out / "lm"))  # no resize: the vocabulary is grown in the folder
    for task in ("comprehension", "generation"):
        config = json.loads((out / "adapters" / task / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str((out / "lm").resolve())
        assert not config.get("modules_to_save")
        model = PeftModel.from_pretrained(lm, str(out / "adapters" / task)).eval()
        with torch.no_grad():
            got = model(input_ids=ids).logits
        assert torch.equal(got, _pipeline_logits(folder, task, ids, "hlora")), task
        lm = model.unload()
    assert {"projectors.safetensors", "vlm.json", "vq"} <= {p.name for p in (out / "medtune").iterdir()}


def test_bad_requests_fail_with_one_line(toy_base: Path, toy_vq: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        export_trained(tmp_path, tmp_path / "x", "onnx")
    with pytest.raises(ExportError, match="not a trained medtune model folder"):
        export_trained(tmp_path, tmp_path / "x", "peft")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        export_trained(tmp_path, tmp_path / "full", "peft")


# -- a whole VLM (LLaVA) ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the user's checkpoint, medtune's base folder of it)."""
    from components.models.hf import HFVLM

    root = tmp_path_factory.mktemp("llava")
    ckpt = build_tiny("llava", root / "ckpt")
    return ckpt, HFVLM.from_checkpoint(ckpt).save(root / "base")


def _vlm_batch(folder: Path, toy_dataset: Path) -> dict[str, Any]:
    from components.models.backend import image_loader
    from components.training.data import ImageStore, read_records

    model = load_trained(folder)
    record = next(r for r in read_records(toy_dataset) if r["task"] == "comprehension")
    store = ImageStore(toy_dataset, 32, 1)
    return dict(model.collator(image_loader(model, store))([record]))


@pytest.fixture(scope="module", params=FAMILIES)
def family_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the user's checkpoint, medtune's base folder of it) for each whole-VLM family."""
    from components.models.hf import HFVLM

    root = tmp_path_factory.mktemp(request.param)
    ckpt = build_tiny(request.param, root / "ckpt")
    return ckpt, HFVLM.from_checkpoint(ckpt).save(root / "base")


def _plain_inputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint's own forward takes: ids, mask, the family's image tensors, and the image-token types
    Gemma 3 (bidirectional image attention) and Qwen2.5-VL (multimodal RoPE) read."""
    plain = {k: batch[k] for k in ("input_ids", "attention_mask", *model.family.image_keys) if k in batch}
    image = (batch["input_ids"] == model.image_token_id).long()
    if model.family.name == "gemma3":
        plain["token_type_ids"] = image
    if model.family.name == "qwen2_5_vl":
        plain["mm_token_type_ids"] = image
    return plain


def test_peft_on_a_whole_vlm_reproduces_its_logits_with_an_image(
    family_base: tuple[Path, Path], toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    ckpt, base = family_base
    folder = _trained_folder(base, toy_vq, tmp_path / "model", "hlora")
    out = export_trained(folder, tmp_path / "peft", "peft")
    info = json.loads((out / "export.json").read_text())
    config = json.loads((out / "comprehension" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == info["base"] == str(ckpt)  # the user's checkpoint, not the cache
    projector = ("multi_modal_projector", "connector", "visual.merger")  # llava and gemma3, idefics3, qwen2_5_vl
    assert any(m.endswith(projector) for m in config["modules_to_save"]), config["modules_to_save"]
    batch = _vlm_batch(folder, toy_dataset)
    pipeline = load_trained(folder)
    with torch.no_grad():
        want = pipeline(**{k: v for k, v in batch.items() if k != "labels"}).logits
    user = AutoModelForImageTextToText.from_pretrained(info["base"])
    user.resize_token_embeddings(info["vocab_rows"])
    exported = PeftModel.from_pretrained(user, str(out / "comprehension")).eval()
    with torch.no_grad():
        got = exported(**_plain_inputs(pipeline, batch)).logits
    assert torch.equal(got, want)


def test_merged_whole_vlm_loads_with_plain_transformers(
    llava: tuple[Path, Path], toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    _, base = llava
    folder = _trained_folder(base, toy_vq, tmp_path / "model", "lora")
    out = export_trained(folder, tmp_path / "merged", "merged")
    batch = _vlm_batch(folder, toy_dataset)
    with torch.no_grad():
        want = load_trained(folder)(**{k: v for k, v in batch.items() if k != "labels"}).logits
    plain = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    got = _plain_transformers_logits(out, plain, "AutoModelForImageTextToText", tmp_path)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_hf_folder_of_a_whole_vlm_loads_as_one_and_reproduces_its_logits(
    llava: tuple[Path, Path], toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    _, base = llava
    folder = _trained_folder(base, toy_vq, tmp_path / "model", "hlora")
    out = export_trained(folder, tmp_path / "hf", "hf")
    batch = _vlm_batch(folder, toy_dataset)
    with torch.no_grad():
        want = load_trained(folder)(**{k: v for k, v in batch.items() if k != "labels"}).logits
    vlm = AutoModelForImageTextToText.from_pretrained(str(out))  # the trained projector and rows are in it
    model = PeftModel.from_pretrained(vlm, str(out / "adapters" / "comprehension")).eval()
    with torch.no_grad():
        got = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
    assert torch.equal(got, want)
