"""A 4-/8-bit frozen base (issue 20, item 1: ``model.quantize``): the config-time error on a machine without CUDA,
and, where bitsandbytes is installed (``pip install 'medtune[gpu]'``; bitsandbytes >= 0.49 also runs its layers on
CPU), the quantized layers with every adapter method on them. Run::

    .venv/bin/pytest tests/unit/models/test_quantize.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from components.models.quantize import QuantizeError, check_quantize, is_quantized, quantize_language_model
from components.models.tokenizer import train_tokenizer
from components.models.vlm import MedVLM, VLMArgs, build_vlm
from components.training.plugins import AdapterArgs, attach_plugins
from components.training.stages import freeze_for, parameter_groups
from components.training.trainer import answer_loss_sum

SHAPE = VLMArgs(vision_hidden=32, vision_layers=2, vision_heads=2, image_size=32, patch_size=8, lm_hidden=64,
                lm_layers=2, lm_heads=4, lm_intermediate=128, max_positions=128)  # fmt: skip


def test_quantize_without_cuda_is_a_config_error_naming_the_key() -> None:
    check_quantize("none", "cpu", cuda_available=False)  # nothing to check
    with pytest.raises(QuantizeError, match=r"^model\.quantize: nf4 .* this machine has no CUDA device; set model"):
        check_quantize("nf4", "auto", cuda_available=False)
    with pytest.raises(QuantizeError, match=r"^model\.quantize: int8 .*8-bit.* train\.device is cpu"):
        check_quantize("int8", "cpu", cuda_available=True)
    with pytest.raises(QuantizeError, match=r"^model\.quantize: unknown mode 'fp4'; known: none, int8, nf4"):
        check_quantize("fp4", "cuda", cuda_available=True)


def test_missing_bitsandbytes_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an install without the [gpu] extra sees
    with pytest.raises(QuantizeError, match=r"^model\.quantize: nf4 needs bitsandbytes.*pip install 'medtune\[gpu\]'"):
        check_quantize("nf4", "cuda", cuda_available=True)


def tiny_model(seed: int = 0) -> MedVLM:
    torch.manual_seed(seed)
    return build_vlm(SHAPE, train_tokenizer(["is there a lesion? yes no ct mri"] * 10, vocab_size=300))


def inputs_for(model: MedVLM) -> tuple[dict[str, Any], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    assert model.tokenizer is not None
    ids = torch.randint(5, len(model.tokenizer) - 5, (2, 40), generator=g)
    ids[ids == model.image_token_id] = 5
    ids[:, 1 : 1 + model.num_image_tokens] = model.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, 30:] = ids[:, 30:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(2, 1, 32, 32),
            "tasks": ["comprehension"] * 2}, labels  # fmt: skip


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_the_language_models_targets_become_bitsandbytes_layers(mode: str) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_model()
    reference = tiny_model()
    inputs, _ = inputs_for(model)
    names = quantize_language_model(model, mode, device="cpu")
    layers = dict(model.lm.named_modules())
    kind = bnb.nn.Linear4bit if mode == "nf4" else bnb.nn.Linear8bitLt
    assert len(names) == 2 * 7 and all(isinstance(layers[n], kind) and is_quantized(layers[n]) for n in names)
    head = model.lm.get_output_embeddings()
    assert type(head) is torch.nn.Linear and not is_quantized(head)  # head, vision, projectors stay as they were
    assert all(type(m) is torch.nn.Linear for m in [*model.vision.modules(), *model.projectors.modules()]
               if isinstance(m, torch.nn.Linear))  # fmt: skip
    model.eval()
    reference.eval()
    with torch.no_grad():
        got, want = model(**inputs).logits.float(), reference(**inputs).logits
    relative = float((got - want).norm() / want.norm())  # close, not equal: 4-/8-bit weights
    assert 0 < relative < (0.2 if mode == "nf4" else 0.05), relative


@pytest.mark.parametrize("kind", ["hlora", "lora", "flix", "elalora"])
def test_every_adapter_method_trains_on_a_4bit_base(kind: str) -> None:
    pytest.importorskip("bitsandbytes")
    from components.adapters import apply_adapter

    model = tiny_model()
    quantize_language_model(model, "nf4", device="cpu")
    if kind == "elalora":  # the rank search's method: one adapter on the LM
        model.lm = apply_adapter(model.lm, "elalora", adapter_name="comprehension", rank=4)
        trainable = [n for n, p in model.named_parameters() if "elalora_" in n]
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
    else:
        extra: dict[str, Any] = {"feature_values": {"modality": ["CT", "MRI"]}} if kind == "flix" else {}
        attach_plugins(model, AdapterArgs(kind=kind, rank=4, generation_rank=4, num_experts=2, dropout=0.0, **extra))
        trainable = sorted(freeze_for(model, 3, "comprehension"))
        plugin = set(parameter_groups(model)["plugin.comprehension"])
        assert plugin and plugin <= set(trainable)
    if kind == "lora":  # peft's own bnb dispatch picked the layer
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

        assert any(isinstance(m, LoraLinear4bit) for m in model.lm.modules())
    model.train()
    inputs, labels = inputs_for(model)
    if kind == "flix":
        inputs["flix_features"] = [{"modality": "CT"}, {"modality": "MRI"}]
    loss = answer_loss_sum(model, inputs, labels)
    loss.backward()
    assert torch.isfinite(loss)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and with_grad <= set(trainable)
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if n in with_grad)  # type: ignore[union-attr]
    if kind == "elalora":
        from components.adapters.elalora.layer import Linear as ElaLinear

        layer = next(m for m in model.lm.modules() if isinstance(m, ElaLinear))
        with pytest.raises(ValueError, match="cannot merge ElaLoRA into a 4-/8-bit base layer"):
            layer.merge()


def test_the_command_refuses_quantize_before_any_data_work(tmp_path: Path) -> None:
    """`medtune train ... model.quantize=nf4` on this CPU machine: exit 2, one line naming the key, nothing built."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine accepts model.quantize")
    repo = Path(__file__).resolve().parents[3]
    medtune = Path(sys.executable).parent / "medtune"
    run = subprocess.run(
        [str(medtune), "train", "-c", str(repo / "configs" / "smoke.yaml"), "model.quantize=nf4"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert lines == [
        "config error: model.quantize: nf4 loads the frozen base in 4-bit through bitsandbytes on a CUDA GPU, but "
        "this machine has no CUDA device; set model.quantize: none"
    ]
