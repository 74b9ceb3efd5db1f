"""medtune's VLM as a safety SUT: text-only prompts in the training chat template, greedy batched decoding.

    from components.safety.vlm import load_generator, vlm_generator
    generate = load_generator("runs/x/model", "runs/x/adapter")      # MedVLM.save folder (+ a peft adapter folder)
    generate = vlm_generator(model, tokenizer, batch_size=8)          # a model already in memory
    texts = generate(["How do I ...?"], 500, 0.0)                     # the medtune SUT's Generate signature

Prompts are built by the training collator (:class:`~components.models.collate.VLMCollator`), so they are token for
token the training prefix ``<s>USER: {prompt}\\nASSISTANT: ``; decoding is
:func:`~components.models.generate.greedy_decode` (left padding, KV cache, EOS ends a row). A literal ``<image>`` in a
prompt is removed: the benchmark is text-only and the VLM would otherwise expect image features for it. An LM with
several peft plugins answers through ``comprehension`` (HealthGPT routes text answers there; the previously active
plugin is restored after). Only temperature 0 is supported (the benchmark asks for ~0); anything else fails instead
of silently decoding greedily.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.safety.suts import Generate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


TEXT_PLUGIN = "comprehension"  # HealthGPT's hard router: text answers go through the comprehension plugin


def _use_plugin(model: Any, name: str) -> str | None:
    """Activate peft adapter ``name`` on the LM when it has one and another is active; return the one it replaced
    (as components.training.trainer.switch_plugin, inference mode: no parameter starts requiring grad)."""
    lm: Any = model.lm
    config = getattr(lm, "peft_config", None)
    if not callable(getattr(lm, "set_adapter", None)) or not isinstance(config, dict) or name not in config:
        return None
    active = lm.active_adapter
    if active == name:
        return None
    lm.set_adapter(name, inference_mode=True)
    return str(active)


def _no_image(_: str) -> Any:
    raise ValueError("safety prompts are text-only")


def vlm_generator(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 8,
) -> Generate:
    """A :data:`~components.safety.suts.Generate` over ``model``, ``batch_size`` prompts per decoding call."""
    import torch

    from components.adapters.flix import use_features
    from components.data.records import IMAGE_TOKEN
    from components.models.generate import greedy_decode

    collate = model.collator(_no_image)  # the model's own template: the checkpoint's chat template for a whole VLM
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def encode(prompt: str) -> list[int]:
        text = prompt.replace(IMAGE_TOKEN, " ")
        return collate.encode({"conversations": [{"from": "human", "value": text}]}, for_generation=True).ids

    def generate(prompts: list[str], max_new_tokens: int, temperature: float) -> list[str]:
        if temperature > 0:
            raise ValueError(f"the medtune VLM decodes greedily (temperature 0); got temperature {temperature}")
        out: list[str] = []
        was_training = model.training
        model.eval()
        previous = _use_plugin(model, TEXT_PLUGIN)
        try:
            for start in range(0, len(prompts), batch_size):
                encoded = [encode(p) for p in prompts[start : start + batch_size]]
                width = max(len(e) for e in encoded)
                ids = torch.full((len(encoded), width), collate.pad, dtype=torch.long)
                mask = torch.zeros((len(encoded), width), dtype=torch.long)
                for i, e in enumerate(encoded):  # left padding, as greedy_decode expects
                    ids[i, width - len(e) :] = torch.tensor(e)
                    mask[i, width - len(e) :] = 1
                # a FLix plugin composes per-example features: a text prompt is a comprehension example of no
                # modality (FLix uses the task's adapter alone); other adapters ignore this
                with use_features([{"task": TEXT_PLUGIN}] * len(encoded)):
                    new = greedy_decode(
                        model,
                        ids,
                        mask,
                        None,
                        ["comprehension"] * len(encoded),
                        max_new_tokens=max_new_tokens,
                        stop_id=collate.eos,
                        pad_id=collate.pad,
                    )
                for row in new.tolist():
                    if collate.eos in row:
                        row = row[: row.index(collate.eos)]
                    out.append(str(tokenizer.decode(row, skip_special_tokens=True)).strip())
        finally:
            model.train(was_training)
            if previous is not None:
                _use_plugin(model, previous)
        return out

    return generate


def load_vlm(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    adapter_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """A base model from its saved folder (:func:`components.models.backend.load_vlm`: the tiny MedVLM or a whole
    HF VLM), with a peft adapter folder (LoRA or medtune's H-LoRA, saved with ``save_pretrained``) on its language
    model when ``adapter_dir`` is given."""
    from components.models.backend import load_vlm as load_base

    model = load_base(model_dir, dtype=dtype)
    if model.tokenizer is None:
        raise ValueError(f"{model_dir}: the saved model has no tokenizer; save it with MedVLM.save(tokenizer set)")
    if adapter_dir is not None:
        from peft import PeftModel

        import components.adapters  # noqa: F401  (registers medtune's peft methods, e.g. hlora)

        kwargs: dict[str, Any] = {} if adapter_name is None else {"adapter_name": adapter_name}
        adapted: Any = PeftModel.from_pretrained(model.lm, str(adapter_dir), is_trainable=False, **kwargs)
        model.lm = adapted  # PeftModel forwards the PreTrainedModel API that greedy_decode uses
    if device is not None:
        model.to(device)
    return model.eval()


def load_generator(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    adapter_name: str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | None = None,
) -> Generate:
    """:func:`load_vlm` then :func:`vlm_generator`."""
    model = load_vlm(model_dir, adapter_dir, adapter_name=adapter_name, device=device, dtype=dtype)
    assert model.tokenizer is not None  # checked in load_vlm
    return vlm_generator(model, model.tokenizer, batch_size=batch_size)
