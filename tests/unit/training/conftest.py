"""Fixtures of the training tests: a tiny synthetic VL-Health folder (PNGs + records.jsonl) built in tmp_path, a tiny
base VLM and VQ tokenizer, and the model the stages train. Everything is seeded, small and fast on 2 CPU threads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from components.models.tokenizer import train_tokenizer
from components.models.vlm import MedVLM, VLMArgs, build_vlm
from components.models.vq import VQConfig, VQTokenizer, train_vq
from components.training.base import train_texts
from components.training.data import read_records
from components.training.plugins import AdapterArgs, prepare_model

torch.set_num_threads(2)

TINY = VLMArgs(vision_hidden=32, vision_layers=2, vision_heads=2, image_size=32, patch_size=8, lm_hidden=48,
               lm_layers=2, lm_heads=4, lm_intermediate=96, max_positions=128)  # fmt: skip
TINY_VQ = VQConfig(image_size=32, downsample=8, codebook_size=16, code_dim=8, hidden=16, res_blocks=0)


def _image(kind: int, lesion: bool, size: int = 32, seed: int = 0) -> np.ndarray:
    """A grey disc (CT-like: kind 0, MRI-like: kind 1) with an optional bright spot on the left."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    img = np.where((x - size / 2) ** 2 + (y - size / 2) ** 2 < (size * 0.4) ** 2, 90 + 80 * kind, 10).astype(float)
    if lesion:
        img[(x - size * 0.35) ** 2 + (y - size / 2) ** 2 < 9] = 250
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]


def make_dataset(root: Path, subjects: int = 6) -> Path:
    """A built-dataset-shaped folder: per subject a CT and an MRI image, closed/open/caption questions, CT->MRI
    conversion; the last subject is the test split."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for s in range(subjects):
        split = "test" if s == subjects - 1 else "train"
        lesion = s % 2 == 0
        paths = {}
        for k, modality in enumerate(("CT", "MRI")):
            rel = f"images/s{s}_{modality}.png"
            Image.fromarray(_image(k, lesion, seed=10 * s + k), "L").save(root / rel)
            paths[modality] = rel
        for modality in ("CT", "MRI"):
            base = {"source": "toy", "modality": modality, "body_part": "abdomen", "group": f"g{s}", "split": split,
                    "image": paths[modality], "features": {}}  # fmt: skip
            qa = [
                ("vqa_closed", "presence", "Is there a lesion?", "yes" if lesion else "no"),
                ("vqa_closed", "modality_choice", "Is this CT or MRI?", modality),
                ("vqa_open", "modality_open", "What modality is this?", modality),
                ("caption", "caption", "Describe.", f"A {modality} slice, {'one' if lesion else 'no'} lesion."),
            ]  # fmt: skip
            for kind, qtype, question, answer in qa:
                records.append({**base, "id": f"toy/s{s}/{modality}/{qtype}", "task": "comprehension",
                                "kind": kind, "conversations": _turns(question, answer),
                                "meta": {"question_type": qtype}})  # fmt: skip
        records.append({"source": "toy", "modality": "CT", "body_part": "abdomen", "group": f"g{s}", "split": split,
                        "id": f"toy/s{s}/ct2mri", "task": "generation", "kind": "modality_conversion",
                        "image": paths["CT"], "target_image": paths["MRI"], "features": {},
                        "conversations": _turns("Convert this CT slice into an MRI.", "An MRI."),
                        "meta": {"question_type": "modality_conversion"}})  # fmt: skip
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def toy_base(toy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny base (tokenizer trained on the toy texts), saved like bootstrap_base's output."""
    train = [r for r in read_records(toy_dataset) if r["split"] == "train"]
    torch.manual_seed(0)
    model = build_vlm(TINY, train_tokenizer(train_texts(train), vocab_size=300))
    return model.save(tmp_path_factory.mktemp("base") / "base")


@pytest.fixture(scope="session")
def toy_vq(toy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from components.models.vq import load_dataset_images

    images = load_dataset_images(toy_dataset)
    vq, _ = train_vq(images, TINY_VQ, steps=3, batch_size=8, seed=0)
    folder = tmp_path_factory.mktemp("vq") / "vq"
    vq.save(folder)
    return folder


ModelFactory = Callable[..., MedVLM]


@pytest.fixture()
def make_model(toy_base: Path, toy_vq: Path) -> ModelFactory:
    """``make_model(kind="hlora", dropout=0.0)``: the base + code tokens + two plugins, seeded."""

    def factory(kind: str = "hlora", dropout: float = 0.0, seed: int = 0) -> MedVLM:
        torch.manual_seed(seed)
        vq = VQTokenizer.load(toy_vq)
        adapter = AdapterArgs(kind=kind, rank=4, generation_rank=8, num_experts=2, dropout=dropout)
        return prepare_model(toy_base, codebook_size=vq.config.codebook_size, adapter=adapter)

    return factory


def pools_and_collate(model: MedVLM, dataset: Path, vq_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], Any]:
    """Train-split pools and a collator with the VQ target codes, as the recipe builds them."""
    from components.models.collate import VLMCollator
    from components.training.data import ImageStore, encode_targets, record_pools, target_codes_from

    pools = record_pools(read_records(dataset), split="train")
    store = ImageStore(dataset, model.image_size, model.channels)
    codes = encode_targets(VQTokenizer.load(vq_dir), store, [*pools["generation"], *pools["reconstruction"]])
    assert model.tokenizer is not None
    collate = VLMCollator(model.tokenizer, model.num_image_tokens, store.vision, target_codes=target_codes_from(codes))
    return pools, collate
