"""The VQ image tokenizer: shapes and the grid contract, files, determinism, training behaviour, dataset reading.

Tiny configs (16 px, f = 4 -> a 4x4 grid) keep every training run to a fraction of a second; the quality of the
default config (64 px, f = 8, K = 256) is measured outside the unit tier and reported in the module docstring.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.models.vq import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    VQConfig,
    VQTokenizer,
    evaluate_vq,
    load_dataset_images,
    train_vq,
)

TINY = VQConfig(image_size=16, downsample=4, codebook_size=32, code_dim=8, hidden=16, res_blocks=1, restart_every=5)


def phantom_like(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Grey (n, 1, size, size) images in [0, 1] like a phantom abdomen slice: a body ellipse with a fat rim,
    organ ellipses of different intensities, a few small bright or dark blobs and a little noise."""
    rng = np.random.default_rng(seed)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, c)
    out = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        rx, ry = rng.uniform(0.75, 0.9), rng.uniform(0.55, 0.7)
        img = np.where((x / rx) ** 2 + (y / ry) ** 2 <= 1, rng.uniform(0.15, 0.3), 0.0)
        img[(x / (rx - 0.1)) ** 2 + (y / (ry - 0.1)) ** 2 <= 1] = rng.uniform(0.4, 0.55)
        for _ in range(int(rng.integers(2, 5))):  # organs
            cx, cy, ax, ay = rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), *rng.uniform(0.1, 0.3, 2)
            img[((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1] = rng.uniform(0.2, 1.0)
        for _ in range(int(rng.integers(0, 3))):  # lesions
            cx, cy, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.12)
            img[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = rng.uniform(0.0, 1.0)
        out[i, 0] = np.clip(img + rng.normal(0.0, 0.01, img.shape), 0.0, 1.0)
    return torch.from_numpy(out)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convs run fastest on one thread, and two threads spin-wait badly when other work shares the CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return phantom_like(48)


@pytest.fixture(scope="module")
def trained(images: torch.Tensor) -> tuple[VQTokenizer, dict[str, float], list[float]]:
    losses: list[float] = []
    model, metrics = train_vq(
        images, TINY, steps=60, batch_size=16, seed=0, progress=lambda s, n, loss: losses.append(loss)
    )
    return model, metrics, losses


def state(model: VQTokenizer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- the grid contract -------------------------------------------------------------------------------------------
def test_default_config_is_an_8x8_grid_of_256_codes() -> None:
    model = VQTokenizer(VQConfig())
    assert model.grid == (8, 8) and model.num_codes_per_image == 64
    assert VQTokenizer(VQConfig(downsample=4)).num_codes_per_image == 256
    codes = model.encode(torch.rand(2, 1, 64, 64))
    assert codes.shape == (2, 64) and codes.dtype == torch.long
    assert model.decode(codes).shape == (2, 1, 64, 64)


def test_decode_with_the_wrong_number_of_codes_names_the_grid() -> None:
    model = VQTokenizer(VQConfig())
    with pytest.raises(ValueError, match=r"^expected 64 codes \(8x8 grid\), got 63$"):
        model.decode(torch.zeros(1, 63, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^expected 64 codes \(8x8 grid\), got 65$"):
        model.decode([list(range(65))])
    with pytest.raises(ValueError, match=r"expected 64 codes \(8x8 grid\), got 63"):
        model.decode(torch.zeros(63, dtype=torch.long))  # one image's codes, as the LM emits them
    too_big = torch.zeros(1, 64, dtype=torch.long)
    too_big[0, 5] = 256
    with pytest.raises(ValueError, match=r"code ids must lie in \[0, 256\), got values in \[0, 256\]"):
        model.decode(too_big)
    with pytest.raises(ValueError, match="must be integers"):
        model.decode(torch.zeros(1, 64))


def test_one_image_of_codes_or_a_grid_decodes_like_a_batch_of_rows() -> None:
    model = VQTokenizer(TINY).eval()
    codes = torch.arange(32).view(2, 16) % TINY.codebook_size
    batch = model.decode(codes)
    assert torch.equal(model.decode(codes[0]), model.decode(codes[:1]))
    assert torch.equal(model.decode(codes.view(2, 4, 4)), batch)  # row-major (B, h, w), as generate.py lays it out
    with pytest.raises(ValueError, match=r"expected 16 codes \(4x4 grid\), got a 2x8 grid"):
        model.decode(codes.view(2, 2, 8))


def test_encode_decode_shapes_and_ranges(trained, images) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = trained
    codes = model.encode(images[:5])
    assert codes.shape == (5, 16) and int(codes.min()) >= 0 and int(codes.max()) < TINY.codebook_size
    recon = model.decode(codes)
    assert recon.shape == (5, 1, 16, 16) and float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


@pytest.mark.parametrize(("index", "near", "far"), [(7, (0, 56), (56, 0)), (56, (56, 0), (0, 56))])
def test_codes_are_row_major_over_the_grid(index: int, near: tuple[int, int], far: tuple[int, int]) -> None:
    """Code k belongs to grid cell (k // 8, k % 8): changing code 7 (top right) changes pixels there and leaves
    the bottom-left corner alone, and code 56 the other way round (column-major order would swap them)."""
    model = VQTokenizer(VQConfig()).eval()
    codes = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    changed = codes.clone()
    changed[0, index] = (changed[0, index] + 1) % 256
    diff = (model.decode(changed) - model.decode(codes)).abs()[0, 0]
    (ny, nx), (fy, fx) = near, far
    assert float(diff[ny : ny + 8, nx : nx + 8].sum()) > 0
    assert float(diff[fy : fy + 8, fx : fx + 8].sum()) == 0.0


def test_bad_image_shape_and_config_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 16, 16\)"):
        VQTokenizer(TINY).encode(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="power of two"):
        VQConfig(downsample=6)
    with pytest.raises(ValueError, match="multiple of downsample"):
        VQConfig(image_size=60, downsample=8)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        VQConfig(channels=2)


# -- training ----------------------------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_reports_metrics(trained) -> None:  # type: ignore[no-untyped-def]
    model, metrics, losses = trained
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert set(metrics) >= {"recon_mse", "psnr", "ssim", "codebook_usage", "perplexity", "train_seconds"}
    untrained = evaluate_vq(VQTokenizer(TINY).eval(), phantom_like(48))
    assert metrics["recon_mse"] < 0.5 * untrained["recon_mse"]
    assert metrics["psnr"] > untrained["psnr"] + 3.0 and metrics["ssim"] > untrained["ssim"]
    assert not model.training


def test_dead_code_restarts_keep_the_codebook_in_use(images, trained) -> None:  # type: ignore[no-untyped-def]
    _, with_restarts, _ = trained
    no_restart = dataclasses.replace(TINY, restart_every=0)
    _, without = train_vq(images, no_restart, steps=60, batch_size=16, seed=0)
    assert with_restarts["codebook_usage"] >= 0.75
    assert with_restarts["codebook_usage"] > without["codebook_usage"]
    assert with_restarts["perplexity"] > without["perplexity"]


def test_same_seed_same_model_other_seed_other_model(images) -> None:  # type: ignore[no-untyped-def]
    first, metrics = train_vq(images, TINY, steps=12, batch_size=16, seed=0)
    again, metrics_again = train_vq(images, TINY, steps=12, batch_size=16, seed=0)
    a, b = state(first), state(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_again["recon_mse"] == metrics["recon_mse"]
    other, _ = train_vq(images, TINY, steps=12, batch_size=16, seed=1)
    assert not torch.equal(other.quantizer.codebook, first.quantizer.codebook)


def test_training_leaves_the_global_rng_alone(images) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_vq(images[:8], TINY, steps=2, batch_size=4)
    assert torch.equal(torch.rand(3), expected)


def test_num_threads_applies_to_the_call_only(images) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(2)
    seen: list[int] = []
    train_vq(
        images[:8], TINY, steps=2, batch_size=4, num_threads=1, progress=lambda *_: seen.append(torch.get_num_threads())
    )
    assert seen == [1, 1] and torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_eval_mode_and_encode_change_no_codebook_state(trained, images) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = trained
    before = state(model)
    model.encode(images)
    model(images[:4])  # eval mode: no EMA update
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradients_pass_the_quantiser_to_the_encoder(images) -> None:  # type: ignore[no-untyped-def]
    model = VQTokenizer(TINY).train()
    recon, vq_loss, codes = model(images[:8])
    assert vq_loss.ndim == 0 and codes.shape == (8, 16)
    ((recon - images[:8]) ** 2).mean().backward()
    first_conv = model.encoder[0]
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.weight.grad is not None
    assert float(first_conv.weight.grad.abs().sum()) > 0


# -- files -------------------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(trained, images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = trained
    model.save(tmp_path / "vq")
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])
    loaded = VQTokenizer.load(tmp_path / "vq")
    assert loaded.config == model.config and not loaded.training
    codes = model.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_load_errors_name_the_folder_or_file(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"folder {missing} does not exist"):
        VQTokenizer.load(missing)
    model, _, _ = trained
    folder = tmp_path / "vq"
    model.save(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"{folder / WEIGHTS_FILE} is corrupt"):
        VQTokenizer.load(folder)
    model.save(folder)
    (folder / CONFIG_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{folder / CONFIG_FILE} is not a valid VQ tokenizer config"):
        VQTokenizer.load(folder)
    model.save(folder)
    raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    raw["config"]["codebook_size"] = 64  # weights no longer fit the config
    (folder / CONFIG_FILE).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="does not match vq_config.json"):
        VQTokenizer.load(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"folder {folder} has no {WEIGHTS_FILE}"):
        VQTokenizer.load(folder)


# -- dataset images -----------------------------------------------------------------------------------------------
def write_dataset(root: Path) -> list[np.ndarray]:
    """Three 16x16 grey PNGs; four records reference them (one image twice, one only as a target)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pixels):
        Image.fromarray(p, "L").save(root / "images" / f"{i}.png")
    records = [
        {"id": "a", "image": "images/0.png", "target_image": None, "split": "train"},
        {"id": "b", "image": "images/1.png", "target_image": "images/2.png", "split": "train"},
        {"id": "c", "image": "images/0.png", "split": "test"},
        {"id": "d", "image": "images/2.png", "target_image": "images/1.png", "split": "test"},
    ]
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return pixels


def test_load_dataset_images_reads_each_referenced_png_once(tmp_path: Path) -> None:
    pixels = write_dataset(tmp_path / "ds")
    out = load_dataset_images(tmp_path / "ds")
    assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32
    for i in range(3):
        assert torch.equal(out[i, 0], torch.from_numpy(pixels[i]).float() / 255.0)
    rgb = load_dataset_images(tmp_path / "ds", channels=3)
    assert rgb.shape == (3, 3, 16, 16) and torch.equal(rgb[:, 1:2], out)


def test_load_dataset_images_takes_a_filtered_record_list(tmp_path: Path) -> None:
    pixels = write_dataset(tmp_path / "ds")
    records = [json.loads(line) for line in (tmp_path / "ds" / "records.jsonl").read_text().splitlines()]
    only_a = load_dataset_images(tmp_path / "ds", [r for r in records if r["id"] == "a"])
    assert only_a.shape == (1, 1, 16, 16) and torch.equal(only_a[0, 0], torch.from_numpy(pixels[0]).float() / 255)


def test_load_dataset_images_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"dataset folder {tmp_path / 'absent'} does not exist"):
        load_dataset_images(tmp_path / "absent")
    write_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "images" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="image images/2.png referenced by the records does not exist"):
        load_dataset_images(tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="records.jsonl does not exist"):
        load_dataset_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="leaves the dataset folder"):
        load_dataset_images(tmp_path / "ds", [{"image": "../outside.png"}])


def test_trains_on_loaded_dataset_images(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds")
    model, metrics = train_vq(load_dataset_images(tmp_path / "ds"), TINY, steps=3, batch_size=2)
    assert model.encode(load_dataset_images(tmp_path / "ds")).shape == (3, 16)
    assert 0.0 <= metrics["codebook_usage"] <= 1.0
