"""The phantom source: deterministic, answers equal the ground truth, closed answers balanced, plausible physics.

.venv/bin/pytest tests/unit/data/test_phantom.py -q
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from components.data.phi import find_phi
from components.data.sources import SOURCES, SourceContext, SourceSample
from components.data.sources.phantom import (
    BONE,
    CLOSED,
    CSF,
    FAT,
    LESION,
    LIVER,
    ORGAN_NAMES,
    SPLEEN,
    PhantomSourceConfig,
    make_subjects,
    render,
)
from tests.unit.data.helpers import KEY


def read(**kw: object) -> list[SourceSample]:
    cfg = PhantomSourceConfig(**kw)  # type: ignore[arg-type]
    ctx = SourceContext(name="phantom", root=Path("."), deid_key=KEY, seed=0)
    out = list(SOURCES["phantom"].reader(cfg, ctx))
    assert all(isinstance(s, SourceSample) for s in out)
    return out  # type: ignore[return-value]


def signature(samples: list[SourceSample]) -> list[tuple]:
    return [(s.uid, s.question, s.answer, s.group, s.image.pixels.tobytes()) for s in samples]  # type: ignore[union-attr]


def test_same_seed_same_samples_and_pixels() -> None:
    assert signature(read(subjects=6, seed=3)) == signature(read(subjects=6, seed=3))


def test_different_seed_differs() -> None:
    a, b = read(subjects=6, seed=0), read(subjects=6, seed=1)
    assert [s.image.pixels.tobytes() for s in a[:5]] != [s.image.pixels.tobytes() for s in b[:5]]  # type: ignore[union-attr]
    assert [s.answer for s in a] != [s.answer for s in b]


def test_size_and_render_size_are_honoured() -> None:
    samples = read(subjects=5, render_size=32)
    assert {s.group for s in samples} == {f"phantom-0-s{i:04d}" for i in range(5)}
    assert {s.image.pixels.shape for s in samples} == {(32, 32)}  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [{"render_size": 30}, {"subjects": 0}, {"colour": True}])
def test_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        PhantomSourceConfig(**bad)


def by_subject(samples: list[SourceSample]) -> dict[str, dict[str, SourceSample]]:
    out: dict[str, dict[str, SourceSample]] = defaultdict(dict)
    for s in samples:
        sid, rest = s.uid.split("/", 1)
        out[sid][rest] = s
    return out


def test_answers_equal_ground_truth() -> None:
    from skimage.measure import label, regionprops

    cfg = PhantomSourceConfig(subjects=24, seed=5)
    subjects = {s.sid: s for s in make_subjects(cfg)}
    for sid, qa in by_subject(read(subjects=24, seed=5)).items():
        truth = subjects[sid]
        lesions = label(truth.labels == LESION, connectivity=1).max()  # lesions are drawn disjoint
        assert int(qa["ct/count_open"].answer) == len(truth.lesions) == lesions
        assert qa["ct/presence"].answer == ("yes" if lesions else "no")
        liver, spleen = int(np.sum(truth.labels == LIVER)), int(np.sum(truth.labels == SPLEEN))
        assert qa["mri/largest_organ_open"].answer == ("liver" if liver > spleen else "spleen")
        for m in ("ct", "mri"):
            assert qa[f"{m}/modality_open"].answer == m.upper()
            assert qa[f"{m}/modality_open"].modality == m.upper()
        big = truth.largest_lesion
        if big is None:
            assert "ct/side_open" not in qa
            continue
        # The largest lesion as the pixels show it: its side and quadrant from the centroid of the biggest blob.
        blobs = regionprops(label(truth.labels == LESION, connectivity=1))
        row, col = max(blobs, key=lambda b: b.area).centroid
        n = truth.labels.shape[0]
        assert qa["ct/side_open"].answer == ("left" if col > n / 2 else "right")  # patient's left = image right
        body_row = (truth.body_cy + 1) / 2 * n
        assert qa["ct/quadrant_open"].answer.split()[1] == ("anterior" if row < body_row else "posterior")
        assert qa["ct/organ_open"].answer == ORGAN_NAMES[big.organ]


def test_closed_answers_are_balanced() -> None:
    for kw in ({}, {"subjects": 10, "seed": 4}, {"subjects": 31, "seed": 9}):
        answers: dict[str, Counter] = defaultdict(Counter)
        for s in read(**kw):
            if s.kind == "vqa_closed":
                answers[s.meta["question_type"]][s.answer] += 1
        assert set(answers) == set(CLOSED)
        for qtype, counts in answers.items():
            top = max(counts.values()) / sum(counts.values())
            assert len(counts) == 2 and top <= 0.6, (kw, qtype, counts)


def test_intensities_follow_the_physics() -> None:
    subject = make_subjects(PhantomSourceConfig(subjects=2))[0]
    lab = subject.labels
    n = lab.shape[0] // 2
    blocks = lab.reshape(n, 2, n, 2).transpose(0, 2, 1, 3).reshape(n, n, 4)
    pure = np.all(blocks == blocks[:, :, :1], axis=2)
    mean = {}
    for m in ("CT", "MRI"):
        img = render(subject, m, n, 0, 3).astype(float)
        mean[m] = {t: img[pure & (blocks[:, :, 0] == t)].mean() for t in (FAT, LIVER, BONE, CSF)}
    assert mean["CT"][BONE] > mean["CT"][LIVER] > mean["CT"][CSF] > mean["CT"][FAT]  # bone bright, fluid dark-ish
    assert mean["MRI"][CSF] > mean["MRI"][FAT] > mean["MRI"][LIVER] > mean["MRI"][BONE]  # fluid bright on T2


def test_generation_pairs_and_features() -> None:
    qa = by_subject(read(subjects=3))["s0001"]
    ct, mri = qa["ct/modality_open"].image.pixels, qa["mri/modality_open"].image.pixels
    conv = qa["ct2mri"]
    assert conv.kind == "modality_conversion" and conv.task == "generation"
    assert np.array_equal(conv.image.pixels, ct) and np.array_equal(conv.target_image.pixels, mri)  # type: ignore[union-attr]
    assert np.array_equal(qa["mri2ct"].target_image.pixels, ct)  # type: ignore[union-attr]
    sr = qa["ct/sr4x"]
    low, full = sr.image.pixels.astype(float), sr.target_image.pixels.astype(float)  # type: ignore[union-attr]
    assert np.abs(np.diff(low, axis=1)).mean() < 0.8 * np.abs(np.diff(full, axis=1)).mean()  # detail removed
    assert abs(low.mean() - full.mean()) < 3
    for s in qa.values():
        assert set(s.features) == {"task", "modality", "body_part", "site"}
        assert s.features["site"] == "site-1" and s.body_part == "abdomen" and s.license == "CC0-1.0"


def test_question_texts_carry_no_phi_pattern() -> None:
    for s in read(subjects=12):
        assert find_phi(s.question) == [] and find_phi(s.answer) == [], (s.question, s.answer)
