"""The pyfunc model's predictor on a tiny trained model folder: answers, generated images, bad rows."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.models.vq import VQTokenizer
from components.tracking.pyfunc_model import (
    PredictionInputError,
    VLMPredictor,
    decode_image,
    encode_png,
    file_to_base64,
    input_example,
    signature,
)
from components.training.plugins import AdapterArgs, prepare_model, save_trained
from tests.unit.training.conftest import TINY, TINY_VQ, make_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """save_trained's folder + vq/, as the train stage leaves it (untrained plugins: the shapes are what matter)."""
    from components.models.tokenizer import train_tokenizer
    from components.models.vlm import build_vlm
    from components.models.vq import load_dataset_images, train_vq
    from components.training.base import train_texts
    from components.training.data import read_records

    root = tmp_path_factory.mktemp("pyfunc")
    dataset = make_dataset(root / "data", subjects=2)
    torch.manual_seed(0)
    base = build_vlm(TINY, train_tokenizer(train_texts(read_records(dataset)), vocab_size=300)).save(root / "base")
    vq, _ = train_vq(load_dataset_images(dataset), TINY_VQ, steps=2, batch_size=4, seed=0)
    model = prepare_model(base, codebook_size=TINY_VQ.codebook_size, adapter=AdapterArgs(rank=4, num_experts=2))
    folder = save_trained(model, root / "model", base_dir=base)
    vq.save(folder / "vq")
    return folder, dataset / "images" / "s0_CT.png"


def test_predicts_answers_and_images_deterministically(model_folder: tuple[Path, Path]) -> None:
    folder, image = model_folder
    predictor = VLMPredictor.load(folder)
    png = file_to_base64(image)
    rows = input_example(png).to_dict(orient="records") + [{"task": "comprehension", "question": "Is there a lesion?",
                                                             "image": png}]  # fmt: skip
    out = predictor.predict(rows, max_new_tokens=4)
    assert [bool(r["image"]) for r in out] == [False, True, False]
    assert all(isinstance(r["answer"], str) for r in out) and out[1]["answer"] == ""
    with Image.open(io.BytesIO(base64.b64decode(out[1]["image"]))) as generated:
        assert generated.format == "PNG" and generated.size == (32, 32) and generated.mode == "L"
    again = VLMPredictor.load(folder).predict(rows, max_new_tokens=4)
    assert again == out  # greedy decoding: a reload answers identically
    vq = VQTokenizer.load(folder / "vq")
    assert vq.num_codes_per_image == 16


def test_bad_rows_name_the_row_and_column(model_folder: tuple[Path, Path]) -> None:
    folder, image = model_folder
    predictor = VLMPredictor.load(folder)
    png = file_to_base64(image)
    with pytest.raises(PredictionInputError, match=r"row 1: task 'segment' is not one of"):
        predictor.predict([{"task": "comprehension", "question": "q", "image": png},
                           {"task": "segment", "question": "q", "image": png}])  # fmt: skip
    with pytest.raises(PredictionInputError, match=r"row 0: missing or non-string column\(s\) \['image'\]"):
        predictor.predict([{"task": "comprehension", "question": "q"}])
    with pytest.raises(PredictionInputError, match=r"row 0: column 'image' is not a base64 PNG/JPEG image"):
        predictor.predict([{"task": "comprehension", "question": "q", "image": "bm90IGFuIGltYWdl"}])


def test_png_round_trip_and_training_normalisation(tmp_path: Path) -> None:
    pixels = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    decoded = decode_image(encode_png(pixels), 8, 1)
    assert decoded.shape == (1, 8, 8)
    assert torch.allclose((decoded + 1) / 2, pixels, atol=1 / 255)  # (x - 0.5) / 0.5, as make_image_loader
    rgb = decode_image(encode_png(pixels), 16, 3)
    assert rgb.shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"expected pixels of shape \(1 or 3, H, W\)"):
        encode_png(np.zeros((2, 4, 4)))


def test_signature_names_the_columns() -> None:
    sig = signature()
    assert sig.inputs.input_names() == ["task", "question", "image"]
    assert sig.outputs.input_names() == ["answer", "image"]
    assert sig.params.to_dict()[0]["name"] == "max_new_tokens"


def test_missing_vq_folder_is_explained(model_folder: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = model_folder
    copy = shutil.copytree(folder, tmp_path / "model")
    shutil.rmtree(copy / "vq")
    with pytest.raises(FileNotFoundError, match="has no vq/ folder"):
        VLMPredictor.load(copy)
