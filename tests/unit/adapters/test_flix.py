"""FLix's own properties (METHODS.md §3; issue 6 acceptance): an example's update is the sum of its features'
updates, a mixed batch equals each example alone (inference and training), feature dropout removes exactly the
dropped features, save/load is exact, an unknown value falls back to the other features and is logged once, and a
forward without features fails loudly.

    .venv/bin/pytest tests/unit/adapters/test_flix.py

"Exact" tests use integer-valued weights and inputs in float64 with power-of-two scales: every product and sum is
then exact, so the fused layer and the hand-built per-feature reference must agree bit for bit (``torch.equal``),
whatever order the matmuls sum in.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from torch import nn

from components.adapters import apply_adapter
from components.adapters.flix import (
    FEATURES_KWARG,
    FeaturesMissingError,
    FeatureSpec,
    FLixConfig,
    Linear,
    MergeNotSupportedError,
    feature_vocabulary,
    use_features,
)
from components.config.schema import AdapterConfig
from tests.unit.adapters.test_methods import tiny_lm

VOCAB = {"modality": ["CT", "MRI", "X-ray"], "task": ["comprehension", "generation"]}
SCALES = (0.5, 2.0)  # modality, task (features are laid out in name order)
ROWS: list[dict[str, Any]] = [
    {"task": "comprehension", "modality": "CT"},
    {"task": "generation", "modality": "X-ray"},
    {"task": "comprehension", "modality": "MRI"},
    {"task": "generation"},  # no modality: the task's adapter only
    {"modality": "MRI", "site": "site-1"},  # no task; an extra key the adapter does not use
]


def integer_layer(*, feature_dropout: float = 0.0, seed: int = 0, r: int = 2) -> Linear:
    """A FLix Linear (7 -> 5, 5 values of rank r) with small integer weights, in float64."""
    layer = Linear(
        nn.Linear(7, 5),
        "p",
        spec=FeatureSpec.from_mapping(VOCAB),
        r=r,
        lora_alpha=2.0 * r,
        feature_scales=SCALES,
        feature_dropout=feature_dropout,
        lora_dropout=0.0,
        init_lora_weights=False,
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (layer.base_layer.weight, layer.base_layer.bias, layer.flix_A["p"], layer.flix_B["p"]):
            param.copy_(torch.randint(-3, 4, param.shape, generator=generator).double())
    return layer


def integer_input(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(-3, 4, (batch, 4, 7), generator=torch.Generator().manual_seed(seed)).double()


def feature_update(layer: Linear, x: torch.Tensor, feature: str, value: str) -> torch.Tensor:
    """One feature value's own LoRA, B_v A_v x * scale_f: the definition, not the fused path."""
    rows = layer.value_slice("p", feature, value)
    scale = SCALES[layer.flix_spec["p"].names.index(feature)]
    return (x @ layer.flix_A["p"][rows].T) @ layer.flix_B["p"][:, rows].T * scale


def reference(
    layer: Linear, x: torch.Tensor, rows: Sequence[Mapping[str, Any]], kept: torch.Tensor | None = None
) -> torch.Tensor:
    """base(x) + sum over each example's (kept, known) features of that feature value's update."""
    out = layer.base_layer(x)
    names = layer.flix_spec["p"].names
    parts = []
    for b, row in enumerate(rows):
        total = out[b]
        for f, name in enumerate(names):
            value = row.get(name)
            if value in VOCAB[name] and (kept is None or kept[b, f] == 1):
                total = total + feature_update(layer, x[b], name, value)
        parts.append(total)
    return torch.stack(parts)


def test_an_examples_update_is_the_sum_of_its_features_updates_exactly() -> None:
    layer = integer_layer()
    x = integer_input(len(ROWS))
    with torch.no_grad(), use_features(ROWS):
        fused = layer(x)
    assert torch.equal(fused, reference(layer, x, ROWS))
    # and the updates are really there: each example differs from the base output by its own features' sum
    first = feature_update(layer, x[0], "task", "comprehension") + feature_update(layer, x[0], "modality", "CT")
    assert torch.equal(fused[0] - layer.base_layer(x[0]), first)
    assert not torch.equal(fused[0], layer.base_layer(x[0]))


def test_the_fused_gradients_equal_the_per_feature_reference() -> None:
    layer = integer_layer()
    x = integer_input(len(ROWS))
    params = [layer.flix_A["p"], layer.flix_B["p"]]
    upstream = torch.randint(-2, 3, (len(ROWS), 4, 5), generator=torch.Generator().manual_seed(3)).double()
    with use_features(ROWS):
        got = torch.autograd.grad(layer(x), params, upstream)
    want = torch.autograd.grad(reference(layer, x, ROWS), params, upstream)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    # a value no example has gets no gradient at all (its rows of A), the values present do
    with use_features(ROWS[:1]):  # comprehension + CT only
        grad_a = torch.autograd.grad(layer(x[:1]).sum(), layer.flix_A["p"])[0]
    assert not bool(grad_a[layer.value_slice("p", "modality", "MRI")].any())
    assert not bool(grad_a[layer.value_slice("p", "task", "generation")].any())
    assert bool(grad_a[layer.value_slice("p", "modality", "CT")].any())


def test_a_mixed_batch_gives_each_example_its_output_alone_in_the_layer() -> None:
    layer = integer_layer()
    x = integer_input(len(ROWS))
    with torch.no_grad(), use_features(ROWS):
        together = layer(x)
    for b, row in enumerate(ROWS):
        with torch.no_grad(), use_features([row]):
            assert torch.equal(layer(x[b : b + 1]), together[b : b + 1]), b


def flix_lm(*, dropout: float = 0.0, seed: int = 0, **kwargs: Any) -> PeftModel:
    torch.manual_seed(seed)
    return apply_adapter(
        tiny_lm(), "flix", adapter_name="plugin", rank=4, features=VOCAB, feature_dropout=dropout,
        init_lora_weights=False, dropout=0.0, **kwargs,
    )  # fmt: skip


def ids_for(batch: int) -> torch.Tensor:
    return torch.randint(0, 128, (batch, 9), generator=torch.Generator().manual_seed(5))


def test_a_mixed_batch_equals_each_example_alone_in_a_model_in_inference_and_training() -> None:
    model = flix_lm().eval()
    ids = ids_for(len(ROWS))
    with torch.no_grad():
        together = model(input_ids=ids, **{FEATURES_KWARG: ROWS}).logits
        for b, row in enumerate(ROWS):
            alone = model(input_ids=ids[b : b + 1], flix_features=[row]).logits
            torch.testing.assert_close(alone, together[b : b + 1], rtol=1e-5, atol=1e-5)
    # rows with other features really get other outputs (the same tokens, other adapters)
    with torch.no_grad():
        swapped = model(input_ids=ids, flix_features=ROWS[::-1]).logits
    assert not torch.allclose(swapped[0], together[0])

    model.train()  # training: the gradient of a mixed batch is the sum of the examples' gradients
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(input_ids=ids, labels=ids, flix_features=ROWS).loss * len(ROWS)  # mean over equal-length rows
    mixed = torch.autograd.grad(loss, params)
    summed = [torch.zeros_like(p) for p in params]
    for b, row in enumerate(ROWS):
        one = model(input_ids=ids[b : b + 1], labels=ids[b : b + 1], flix_features=[row]).loss
        for acc, g in zip(summed, torch.autograd.grad(one, params), strict=True):
            acc += g
    for got, want in zip(mixed, summed, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_feature_dropout_zeroes_exactly_the_dropped_features_contributions() -> None:
    layer = integer_layer(feature_dropout=0.5).train()
    other = integer_layer(feature_dropout=0.5, seed=9).train()  # a second layer of the same adapter
    x = integer_input(len(ROWS))
    torch.manual_seed(0)
    with torch.no_grad(), use_features(ROWS) as batch:
        fused, fused_other = layer(x), other(x)
        kept = batch.kept("p")
    assert kept.shape == (len(ROWS), 2)
    assert 0 < int(kept.sum()) < kept.numel(), kept  # this seed drops some features and keeps others
    assert torch.equal(fused, reference(layer, x, ROWS, kept))
    assert torch.equal(fused_other, reference(other, x, ROWS, kept))  # one draw per forward, shared by the layers
    # outside training nothing is dropped
    with torch.no_grad(), use_features(ROWS) as batch:
        assert torch.equal(layer.eval()(x), reference(layer, x, ROWS))
        assert bool((batch.kept("p") == 1).all())


def test_save_then_load_is_exact_and_keeps_the_vocabulary(tmp_path: Path) -> None:
    model = flix_lm(feature_alpha={"task": 16.0}).eval()  # unequal scales: a reordered layout would show
    ids = ids_for(len(ROWS))
    with torch.no_grad():
        expected = model(input_ids=ids, flix_features=ROWS).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "plugin" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "FLIX" and saved["features"] == VOCAB and saved["r"] == 2
    assert (tmp_path / "plugin" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(tiny_lm(), tmp_path / "plugin", adapter_name="plugin").eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, flix_features=ROWS).logits, expected)


def test_an_unknown_value_uses_the_other_features_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    layer = integer_layer()
    x = integer_input(2)
    unknown = [{"task": "generation", "modality": "PET-never-seen"}, {"task": "comprehension", "modality": "CT"}]
    missing = [{"task": "generation"}, unknown[1]]
    with caplog.at_level(logging.WARNING, logger="components.adapters.flix"):
        for _ in range(3):
            with torch.no_grad(), use_features(unknown):
                out = layer(x)
    with torch.no_grad(), use_features(missing):
        assert torch.equal(out, layer(x))
    messages = [r.getMessage() for r in caplog.records if "PET-never-seen" in r.getMessage()]
    assert len(messages) == 1, messages
    assert "'modality'" in messages[0] and "CT, MRI, X-ray" in messages[0]


def test_a_forward_without_features_fails_clearly_and_a_wrong_count_too() -> None:
    model = flix_lm()
    ids = ids_for(2)
    with pytest.raises(FeaturesMissingError, match=r"flix_features=\[.*use_features"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="batch of 2 examples but flix_features has 3 rows"):
        model(input_ids=ids, flix_features=ROWS[:3])
    with pytest.raises(TypeError, match="one mapping per example"):
        model(input_ids=ids, flix_features={"task": "comprehension"})
    with model.disable_adapter(), torch.no_grad():  # a disabled adapter needs no features
        model(input_ids=ids)
    with pytest.raises(FeaturesMissingError):  # the failed calls left no features behind
        model(input_ids=ids)


def test_threads_each_see_their_own_features() -> None:
    model = flix_lm().eval()
    ids = ids_for(2)
    jobs = {k: ROWS[k : k + 2] for k in range(3)}
    with torch.no_grad():
        expected = {k: model(input_ids=ids, flix_features=rows).logits for k, rows in jobs.items()}
    got: dict[int, torch.Tensor] = {}
    start = threading.Barrier(len(jobs))

    def run(k: int) -> None:
        with torch.no_grad(), use_features(jobs[k]):
            start.wait(timeout=30)
            for _ in range(3):
                got[k] = model(input_ids=ids).logits

    threads = [threading.Thread(target=run, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == sorted(jobs)
    for k in jobs:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(model)  # no per-thread state in the model: it copies (EMA, ensembles) and works alike
    with torch.no_grad():
        assert torch.equal(twin(input_ids=ids, flix_features=jobs[0]).logits, expected[0])


def test_merging_is_refused() -> None:
    model = flix_lm()
    with pytest.raises(MergeNotSupportedError, match="each example adds the adapters"):
        model.merge_and_unload()
    base = model.unload()  # unload (no merge) works and removes the feature hooks
    assert not base._forward_pre_hooks


def test_rank_is_an_examples_total_rank_split_over_its_features() -> None:
    model = apply_adapter(tiny_lm(), "flix", adapter_name="p", rank=8, features=VOCAB, target_modules=["q_proj"])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.r["p"] == 4 and layer.flix_A["p"].shape == (5 * 4, 32) and layer.scaling["p"] == 2.0
    with pytest.raises(ValueError, match="7 is not a multiple of the 2 features"):
        apply_adapter(tiny_lm(), "flix", adapter_name="p", rank=7, features=VOCAB)
    direct = apply_adapter(tiny_lm(), "flix", adapter_name="p", rank_per_feature=3, features=VOCAB)
    assert direct.base_model.model.model.layers[0].self_attn.q_proj.r["p"] == 3
    with pytest.raises(ValueError, match="pass features="):
        apply_adapter(tiny_lm(), "flix", adapter_name="p", rank=8)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValidationError, match=r"adapter\.features: a feature is listed twice"):
        AdapterConfig(kind="flix", features=["task", "task"])
    with pytest.raises(ValidationError, match=r"adapter\.rank: 16 is not a multiple of the 3 features"):
        AdapterConfig(kind="flix", features=["task", "modality", "site"])
    ok = AdapterConfig(kind="flix", features=["task", "modality", "site"], rank_per_feature=4)
    assert ok.feature_dropout == 0.1
    with pytest.raises(ValueError, match="value twice"):
        FLixConfig(features={"modality": ["CT", "CT"]})
    with pytest.raises(ValueError, match="features must map"):
        FLixConfig()


def test_the_vocabulary_comes_from_the_records_features() -> None:
    records = [{"features": row} for row in ROWS]
    assert feature_vocabulary(records, ["task", "modality"]) == {
        "task": ["comprehension", "generation"],
        "modality": ["CT", "MRI", "X-ray"],
    }
    with pytest.raises(ValueError, match=r"\['body_part'\]: no training record"):
        feature_vocabulary(records, ["task", "body_part"])


def test_the_collated_batch_carries_each_records_features_through_a_medvlm() -> None:
    """The training path: VLMCollator(with_features=True) -> MedVLM(**batch) -> the FLix plugins (issue 6)."""
    from components.models.collate import VLMCollator
    from components.models.tokenizer import train_tokenizer
    from components.models.vlm import VLMArgs, build_vlm
    from components.training.plugins import AdapterArgs, attach_plugins

    tok = train_tokenizer(["USER: Is this CT or MRI?\nASSISTANT: CT MRI yes no"] * 10, 300)
    torch.manual_seed(0)
    args = VLMArgs(vision_hidden=32, vision_layers=2, vision_heads=2, image_size=16, patch_size=8, lm_hidden=32,
                   lm_layers=1, lm_heads=2, lm_intermediate=64, max_positions=64)  # fmt: skip
    model = attach_plugins(
        build_vlm(args, tok),
        AdapterArgs(kind="flix", rank=4, feature_values={"task": ["comprehension"], "modality": ["CT", "MRI"]}),
    ).eval()
    for layer in (m for m in model.modules() if isinstance(m, Linear)):
        nn.init.normal_(layer.flix_B["comprehension"])  # a visible update (B starts at zero)
    records = [
        {"id": str(k), "image": "x.png", "task": "comprehension", "features": {"task": "comprehension", "modality": m},
         "conversations": [{"from": "human", "value": "<image>\nIs this CT or MRI?"}, {"from": "gpt", "value": "CT"}]}
        for k, m in enumerate(("CT", "MRI", "CT"))
    ]  # fmt: skip
    collate = VLMCollator(tok, model.num_image_tokens, lambda path: torch.zeros(1, 16, 16), with_features=True)
    batch = collate(records)
    assert batch[FEATURES_KWARG] == [r["features"] for r in records]  # type: ignore[literal-required]
    assert FEATURES_KWARG not in VLMCollator(tok, model.num_image_tokens, lambda p: torch.zeros(1, 16, 16))(records)
    with torch.no_grad():
        logits = model(**batch).logits
        for k in range(len(records)):
            alone = model(**collate(records[k : k + 1])).logits
            width = alone.shape[1]  # right padding: the batch's rows are longer, their prefixes causal
            torch.testing.assert_close(alone, logits[k : k + 1, :width], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(logits[0], logits[1])  # the same tokens and image, another modality's adapter
        torch.testing.assert_close(logits[0], logits[2], rtol=1e-5, atol=1e-5)
        batch.pop(FEATURES_KWARG)  # type: ignore[misc]
        with pytest.raises(FeaturesMissingError):
            model(**batch)
