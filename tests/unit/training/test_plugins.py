"""The trainable VLM: code tokens at the mean, MedVLM working through the peft-wrapped LM, save_trained ->
load_trained identical outputs for both plugins. Run::

    .venv/bin/pytest tests/unit/training/test_plugins.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from components.evaluation.report import use_plugin
from components.models.generate import generate_image_codes
from components.models.tokenizer import image_code_tokens
from components.models.vlm import MedVLM
from components.training.plugins import load_trained, save_trained
from components.training.stages import parameter_groups
from tests.unit.training.conftest import ModelFactory, pools_and_collate


@pytest.mark.parametrize("kind", ["lora", "hlora"])
def test_save_and_load_give_the_same_model(
    make_model: ModelFactory, toy_base: Path, toy_dataset: Path, toy_vq: Path, tmp_path: Path, kind: str
) -> None:
    model = make_model(kind)
    assert isinstance(model.lm, PeftModel) and set(model.lm.peft_config) == {"comprehension", "generation"}
    base = MedVLM.load(toy_base)
    emb = model.lm.get_input_embeddings().weight
    old = base.lm.get_input_embeddings().weight.shape[0]
    codes = image_code_tokens(model.tokenizer)  # type: ignore[arg-type]
    assert torch.equal(emb[codes.codes[0]], emb[:old].mean(0))  # new rows start at the mean
    groups = parameter_groups(model)
    saved = {n for g in ("projector.comprehension", "projector.generation", "embeddings", "head",
                         "plugin.comprehension", "plugin.generation") for n in groups[g]}  # fmt: skip
    with torch.no_grad():  # what the stages train moves away from its initial value (B no longer zero ...)
        for name, p in model.named_parameters():
            if name in saved:
                p.add_(0.05 * torch.randn_like(p))
    pools, collate = pools_and_collate(model, toy_dataset, toy_vq)
    batch = collate([pools["comprehension"][0], pools["generation"][0]])
    batch.pop("labels")  # type: ignore[misc]
    folder = save_trained(model, tmp_path / "model", base_dir=toy_base)
    again = load_trained(folder)
    model.eval()
    for task in ("comprehension", "generation"):
        use_plugin(model, task)
        use_plugin(again, task)
        with torch.no_grad():
            want, got = model(**batch).logits, again(**batch).logits
        assert torch.equal(want, got), task
    assert (folder / "adapters" / "generation" / "adapter_model.safetensors").is_file()


def test_generation_runs_through_the_wrapped_lm(make_model: ModelFactory, toy_dataset: Path, toy_vq: Path) -> None:
    model = make_model("hlora")
    pools, _ = pools_and_collate(model, toy_dataset, toy_vq)
    from components.training.data import ImageStore

    store = ImageStore(toy_dataset, model.image_size, model.channels)
    use_plugin(model, "generation")
    out = generate_image_codes(model, model.tokenizer, pools["generation"][:2], store.vision, num_codes=16)  # type: ignore[arg-type]
    assert out.shape == (2, 16) and int(out.max()) < 16
