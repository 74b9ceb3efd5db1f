"""The procedural phantom source: CT-like and MRI-like axial abdominal slices with lesions of known position.

Each subject is one anatomy (body outline, subcutaneous fat, liver, spleen, kidneys, aorta, IVC, spine)
rendered twice with physically plausible contrasts: CT (abdominal window, contrast-enhanced: bone bright,
fluid and cysts dark-ish) and T2-weighted MRI (fluid and cysts bright, cortical bone and flowing blood dark),
with organ texture, noise and, for MRI, a coil bias field. Subjects are spread over ``sites`` whose scanners
differ slightly (noise level, contrast), which gives federated partitioning something real to split on.

Every answer is computed from the ground truth (label map and lesion list), images use radiological
convention (the patient's right is on the image's left, anterior at the top), and every closed question type
is balanced by construction so that no answer dominates (a majority-answer baseline stays near 0.5): yes/no
questions ask about the true or the false option by a per-subject coin (the CT render gets one, the MRI render
the other), and the truths behind two-way choices (lesion present, side, larger organ) follow balanced
schedules. Generation pairs: CT -> MRI and MRI -> CT of the same slice, and 4x super-resolution of each render.

Deterministic for ``(seed, subjects, render_size, sites)``. Used from the config::

    sources: {phantom: {kind: phantom, subjects: 400, seed: 0}}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from components.data.sources.base import (
    Quarantined,
    SourceContext,
    SourceImage,
    SourceSample,
    register_source,
)

# Tissue labels of the ground-truth label map.
AIR, FAT, SOFT, MUSCLE, LIVER, SPLEEN, KIDNEY_L, KIDNEY_R, BONE, MARROW, CSF, BLOOD, LESION = range(13)
ORGAN_NAMES = {LIVER: "liver", SPLEEN: "spleen", KIDNEY_L: "left kidney", KIDNEY_R: "right kidney"}
# Display intensities in [0, 1]: CT after an abdominal window (W400/L40) in the portal-venous phase;
# MRI T2-weighted fast spin echo (fat bright-ish, fluid bright, cortical bone and flowing blood dark).
INTENSITY = {
    "CT": (0.0, 0.15, 0.50, 0.53, 0.64, 0.61, 0.80, 0.80, 1.00, 0.78, 0.43, 0.72, 0.42),
    "MRI": (0.0, 0.78, 0.35, 0.18, 0.25, 0.50, 0.60, 0.60, 0.05, 0.40, 0.95, 0.05, 0.90),
}
MODALITIES = ("CT", "MRI")


class PhantomSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["phantom"] = Field("phantom", description="The procedural phantom source.")
    subjects: int = Field(48, ge=1, le=100_000, description="Number of synthetic subjects (groups).")
    seed: int = Field(0, description="Seed; the same seed gives the same images and questions.")
    render_size: int = Field(
        64, ge=16, le=1024, multiple_of=4, description="Rendered images are render_size x render_size pixels."
    )
    sites: int = Field(3, ge=1, le=64, description="Synthetic sites the subjects are spread over (features.site).")
    license: str = Field("CC0-1.0", description="Licence recorded on the records (SPDX id).")


@dataclass(frozen=True)
class Lesion:
    x: float  # centre, normalised image coordinates in [-1, 1] (x to the image right = patient's left)
    y: float  # y down = posterior
    r: float
    organ: int

    @property
    def side(self) -> str:
        return "left" if self.x > 0 else "right"  # the patient's side (radiological convention)


@dataclass
class Subject:
    """Ground truth of one synthetic subject; answers are computed from it."""

    index: int
    sid: str
    site: str
    body_cy: float
    lesions: list[Lesion]
    organ_area: dict[str, int] = field(default_factory=dict)  # pixels per organ in the rendered label map
    labels: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.uint8))  # supersampled label map

    @property
    def largest_lesion(self) -> Lesion | None:
        return max(self.lesions, key=lambda les: les.r) if self.lesions else None

    @property
    def largest_organ(self) -> str:
        return max(("liver", "spleen"), key=lambda o: self.organ_area[o])

    def quadrant(self, lesion: Lesion) -> str:
        return f"{lesion.side} {'anterior' if lesion.y < self.body_cy else 'posterior'}"


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, rot: float = 0.0) -> np.ndarray:
    c, s = np.cos(rot), np.sin(rot)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _balanced(rng: np.random.Generator, n: int) -> np.ndarray:
    """n booleans, half True, in random order."""
    return rng.permutation(np.arange(n) % 2 == 0)


def iter_subjects(cfg: PhantomSourceConfig) -> Iterator[Subject]:
    """The ground truth of every subject, one at a time: anatomy, organ sizes and lesions. The schedules that
    balance the closed answers are drawn for all subjects first, so subject i depends only on the config."""
    sched = np.random.default_rng([cfg.seed, 7919])
    n = cfg.subjects
    has_lesion = _balanced(sched, n)  # half the subjects carry lesions: "Is there a lesion?" is 50/50
    big_spleen = _balanced(sched, n)  # half have splenomegaly: the larger organ is 50/50 liver/spleen
    left_side = np.zeros(n, bool)  # side of the largest lesion, 50/50 among the subjects with lesions
    left_side[has_lesion] = _balanced(sched, int(has_lesion.sum()))
    for i in range(n):
        yield _make_subject(cfg, i, bool(has_lesion[i]), bool(big_spleen[i]), bool(left_side[i]))


def make_subjects(cfg: PhantomSourceConfig) -> list[Subject]:
    return list(iter_subjects(cfg))


def _make_subject(cfg: PhantomSourceConfig, i: int, lesioned: bool, big_spleen: bool, left: bool) -> Subject:
    rng = np.random.default_rng([cfg.seed, i])
    n = 2 * cfg.render_size  # rendered at 2x and averaged down: smooth organ edges
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(coords, coords)
    lab = np.full((n, n), AIR, np.uint8)
    cy = 0.05 + rng.uniform(-0.03, 0.03)
    rx, ry, fat = rng.uniform(0.82, 0.9), rng.uniform(0.6, 0.7), rng.uniform(0.05, 0.1)
    lab[_ellipse(x, y, 0, cy, rx, ry)] = FAT
    lab[_ellipse(x, y, 0, cy, rx - fat, ry - fat)] = SOFT
    vb = cy + (ry - fat) * 0.55  # vertebral body centre
    for side in (-1, 1):
        lab[_ellipse(x, y, side * 0.17, vb + 0.12, 0.11, 0.09)] = MUSCLE  # paraspinal muscles
    s_liver = rng.uniform(0.6, 0.7) if big_spleen else rng.uniform(0.9, 1.08)
    s_spleen = rng.uniform(2.0, 2.25) if big_spleen else rng.uniform(0.8, 1.2)
    lab[_ellipse(x, y, -0.36, cy - 0.08, 0.38 * s_liver, 0.42 * s_liver, rng.uniform(-0.3, 0.1))] = LIVER
    sx, sy = (0.42, cy - 0.02) if big_spleen else (0.5, cy + 0.05)
    lab[_ellipse(x, y, sx, sy, 0.13 * s_spleen, 0.18 * s_spleen, rng.uniform(-0.4, 0.4))] = SPLEEN
    ky = vb - 0.04 + rng.uniform(-0.03, 0.03)
    lab[_ellipse(x, y, 0.3, ky, 0.085, 0.13, 0.35)] = KIDNEY_L
    lab[_ellipse(x, y, -0.3, ky + 0.02, 0.085, 0.13, -0.35)] = KIDNEY_R
    lab[_ellipse(x, y, 0.06, vb - 0.2, 0.045, 0.045)] = BLOOD  # aorta, left of midline
    lab[_ellipse(x, y, -0.09, vb - 0.18, 0.055, 0.045)] = BLOOD  # IVC
    lab[_ellipse(x, y, 0, vb, 0.11, 0.09)] = BONE  # vertebral body: cortex ...
    lab[_ellipse(x, y, 0, vb, 0.085, 0.068)] = MARROW  # ... around marrow
    lab[_ellipse(x, y, 0, vb + 0.15, 0.08, 0.07)] = BONE  # posterior arch
    lab[_ellipse(x, y, 0, vb + 0.14, 0.045, 0.04)] = CSF  # spinal canal
    lesions = _place_lesions(rng, lab, x, y, cy, lesioned, left) if lesioned else []
    for les in lesions:
        lab[(x - les.x) ** 2 + (y - les.y) ** 2 <= les.r**2] = LESION
    area = {name: int(np.sum(lab == k)) // 4 for k, name in ORGAN_NAMES.items()}
    sid = f"s{i:04d}"
    return Subject(i, sid, f"site-{i % cfg.sites}", cy, lesions, area, lab)


def _place_lesions(
    rng: np.random.Generator, lab: np.ndarray, x: np.ndarray, y: np.ndarray, cy: float, lesioned: bool, left: bool
) -> list[Lesion]:
    count = int(rng.integers(1, 4)) if lesioned else 0
    hosts = [SPLEEN if rng.random() < 0.6 else KIDNEY_L] if left else [LIVER if rng.random() < 0.75 else KIDNEY_R]
    hosts += [int(rng.choice([LIVER, LIVER, SPLEEN, KIDNEY_L, KIDNEY_R])) for _ in range(count - 1)]
    out: list[Lesion] = []
    for k, host in enumerate(hosts):
        # The first lesion is the largest: its radius never falls below 0.052, above every other radius.
        big = (0.055, 0.068) if host in (KIDNEY_L, KIDNEY_R) else (0.11, 0.15)
        r = rng.uniform(*big) if k == 0 else rng.uniform(0.035, 0.05)
        ys, xs = np.nonzero(lab == host)
        for attempt in range(900):
            if attempt and attempt % 150 == 0 and k == 0:
                r = max(0.052, r * 0.85)  # a small or crowded organ: shrink the lesion and try again
            j = int(rng.integers(len(xs)))
            px, py = float(x[ys[j], xs[j]]), float(y[ys[j], xs[j]])
            clear = all((px - o.x) ** 2 + (py - o.y) ** 2 > (r + o.r + 0.03) ** 2 for o in out)
            # Inside the host organ only, clear of the midline and of the anterior/posterior divide, so side
            # and quadrant answers are unambiguous.
            if not clear or abs(px) <= 0.1 or abs(py - cy) <= 0.05:
                continue
            if np.all(lab[(x - px) ** 2 + (y - py) ** 2 <= (r + 0.015) ** 2] == host):
                out.append(Lesion(px, py, float(r), host))
                break
        else:
            if k == 0:
                raise RuntimeError(f"phantom: no room for a lesion in the {ORGAN_NAMES[host]} (anatomy bug)")
    return out


def render(subject: Subject, modality: str, render_size: int, seed: int, sites: int) -> np.ndarray:
    """Render one subject in one modality as uint8 render_size x render_size."""
    rng = np.random.default_rng([seed, subject.index, MODALITIES.index(modality) + 1])
    site = subject.index % sites
    lut = np.asarray(INTENSITY[modality])
    img = lut[subject.labels]
    n = img.shape[0]
    coarse = Image.fromarray(rng.normal(0.0, 1.0, (6, 6)).astype(np.float32), "F")
    texture = np.asarray(coarse.resize((n, n), Image.Resampling.BILINEAR))  # low-frequency organ texture
    img = img * (1 + 0.04 * texture * (subject.labels > FAT))
    if modality == "MRI":  # receive-coil bias field
        a, b = rng.uniform(-0.15, 0.15, 2)
        grid = np.linspace(-1, 1, n)
        img = img * (1 + a * grid[None, :] + b * grid[:, None])
    img = img.reshape(render_size, 2, render_size, 2).mean(axis=(1, 3))
    gain = 1 + 0.06 * (site % 3 - 1)  # site-specific scanner contrast and noise
    sigma = (0.02 if modality == "CT" else 0.025) * (1 + 0.35 * (site % 4))
    if modality == "CT":
        img = img * gain + rng.normal(0, sigma, img.shape)
    else:  # magnitude images: Rician noise
        img = np.hypot(img * gain + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def low_resolution(pixels: np.ndarray, factor: int = 4) -> np.ndarray:
    """Downsample by ``factor`` (box filter), then upsample back to the same size (bicubic)."""
    img = Image.fromarray(pixels, "L")
    w, h = img.size
    small = img.resize((w // factor, h // factor), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)


# Question templates per question type; one is picked per render (seeded). No digits in dates, no names:
# nothing here can match a PHI pattern (components/data/phi.py).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "modality_yn": ("Is this {aa} image?", "Was this slice acquired with {a}?"),
    "modality_choice": ("Is this {aa} or {bb} image?", "Was this slice acquired with {a} or with {b}?"),
    "presence": ("Is there a lesion in this slice?", "Is any focal lesion visible?"),
    "count_yn": ("Is the number of lesions in this slice {a}?", "Is the lesion count {a}?"),
    "larger_yn": ("Is the {a} larger than the {b} in this slice?", "Does the {a} appear bigger than the {b}?"),
    "larger_choice": ("Which organ is larger in this slice, the {a} or the {b}?",),
    "side_yn": ("Is the largest lesion on the patient's {a} side?", "Does the largest lesion lie on the {a}?"),
    "side_choice": ("Is the largest lesion on the patient's {a} or {b} side?",),
    "organ_yn": ("Is the largest lesion in the {a}?", "Does the {a} contain the largest lesion?"),
    "modality_open": ("What imaging modality is this?", "Which modality was used to acquire this image?"),
    "count_open": ("How many lesions are visible?", "How many focal lesions does this slice show?"),
    "largest_organ_open": ("Which organ occupies the largest area in this slice?",),
    "side_open": ("On which side of the patient is the largest lesion?",),
    "quadrant_open": ("In which quadrant is the largest lesion (patient's left or right, anterior or posterior)?",),
    "organ_open": ("Which organ contains the largest lesion?",),
    "caption": ("Describe this image.", "Write a short report of this slice."),
}
CLOSED = (
    "modality_yn",
    "modality_choice",
    "presence",
    "count_yn",
    "larger_yn",
    "larger_choice",
    "side_yn",
    "side_choice",
    "organ_yn",
)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _pair(rng: np.random.Generator, a: str, b: str) -> dict[str, str]:
    """Format arguments for a two-way choice, options in random order (the answer is not always first)."""
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    return {"a": first, "b": second, "aa": _article(first), "bb": _article(second)}


def _named(word: str) -> dict[str, str]:
    return {"a": word, "aa": _article(word)}


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'AEFHILMNORSX' or word[0] in 'aeiou' else 'a'} {word}"


def questions(subject: Subject, modality: str, truth_first: bool, rng: np.random.Generator) -> dict[str, tuple]:
    """(question-format arguments, answer) per question type for one render; ``truth_first`` is the coin that
    decides whether a yes/no question asks about the true option (answer yes) or a false one (answer no)."""
    other = "MRI" if modality == "CT" else "CT"
    count, big = len(subject.lesions), subject.largest_organ
    small = "spleen" if big == "liver" else "liver"
    wrong_count = int(rng.choice([k for k in range(4) if k != count]))
    qa: dict[str, tuple] = {
        "modality_yn": (_named(modality if truth_first else other), _yn(truth_first)),
        "modality_choice": (_pair(rng, "CT", "MRI"), modality),
        "presence": ({}, _yn(count > 0)),
        "count_yn": ({"a": count if truth_first else wrong_count}, _yn(truth_first)),
        "larger_yn": (dict(zip("ab", (big, small) if truth_first else (small, big), strict=True)), _yn(truth_first)),
        "larger_choice": (_pair(rng, "liver", "spleen"), big),
        "modality_open": ({}, modality),
        "count_open": ({}, str(count)),
        "largest_organ_open": ({}, big),
    }
    les = subject.largest_lesion
    caption = f"Axial {modality} slice of the abdomen with no focal lesion; the {big} is the largest organ."
    if les is not None:
        host = ORGAN_NAMES[les.organ]
        wrong_side = "right" if les.side == "left" else "left"
        wrong_organ = str(rng.choice([o for o in ORGAN_NAMES.values() if o != host]))
        qa.update(
            {
                "side_yn": ({"a": les.side if truth_first else wrong_side}, _yn(truth_first)),
                "side_choice": (_pair(rng, "left", "right"), les.side),
                "organ_yn": ({"a": host if truth_first else wrong_organ}, _yn(truth_first)),
                "side_open": ({}, les.side),
                "quadrant_open": ({}, subject.quadrant(les)),
                "organ_open": ({}, host),
            }
        )
        noun = "lesion" if count == 1 else "lesions"
        caption = (
            f"Axial {modality} slice of the abdomen with {count} focal {noun}; the largest lies in the {host}, "
            f"{subject.quadrant(les)} quadrant; the {big} is the largest organ."
        )
    qa["caption"] = ({}, caption)
    return qa


def subject_samples(
    cfg: PhantomSourceConfig, subject: Subject, images: dict[str, np.ndarray], coin: bool, rng: np.random.Generator
) -> Iterator[SourceSample]:
    group = f"phantom-{cfg.seed}-{subject.sid}"
    imgs = {m: SourceImage(key=f"{subject.sid}/{m.lower()}", pixels=px) for m, px in images.items()}

    def sample(
        uid: str, m: str, kind: str, q: str, a: str, qt: str, img: SourceImage, target: SourceImage | None = None
    ) -> SourceSample:
        task = "generation" if target is not None else "comprehension"
        return SourceSample(
            uid=f"{subject.sid}/{uid}",
            image=img,
            modality=m,
            body_part="abdomen",
            task=task,
            kind=kind,
            question=q,
            answer=a,
            group=group,
            license=cfg.license,
            target_image=target,
            features={"task": task, "modality": m, "body_part": "abdomen", "site": subject.site},
            meta={"question_type": qt},
        )

    for k, m in enumerate(MODALITIES):
        truth_first = coin if k == 0 else not coin  # one render asks the true option, the other a false one
        for qt, (args, answer) in questions(subject, m, truth_first, rng).items():
            text = str(rng.choice(TEMPLATES[qt])).format(**args)
            kind = "caption" if qt == "caption" else "vqa_closed" if qt in CLOSED else "vqa_open"
            yield sample(f"{m.lower()}/{qt}", m, kind, text, answer, qt, imgs[m])
    for m in MODALITIES:
        other = "MRI" if m == "CT" else "CT"
        desc = "a T2-weighted MRI" if other == "MRI" else "a contrast-enhanced CT"
        yield sample(
            f"{m.lower()}2{other.lower()}",
            m,
            "modality_conversion",
            f"Convert this {m} slice into {desc} of the same anatomy.",
            f"{desc[0].upper()}{desc[1:]} of the same axial abdominal slice.",
            "modality_conversion",
            imgs[m],
            imgs[other],
        )
        low = SourceImage(key=f"{subject.sid}/{m.lower()}-lr4x", pixels=low_resolution(images[m]))
        yield sample(
            f"{m.lower()}/sr4x",
            m,
            "super_resolution",
            f"Reconstruct this low-resolution {m} slice at four times the resolution.",
            f"The same {m} slice at full resolution.",
            "super_resolution",
            low,
            imgs[m],
        )


@register_source("phantom", PhantomSourceConfig)
def read_phantom(cfg: PhantomSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    coins = _balanced(np.random.default_rng([cfg.seed, 104729]), cfg.subjects)
    for subject in iter_subjects(cfg):  # one subject in memory at a time (plus the pixels handed on)
        rng = np.random.default_rng([cfg.seed, subject.index, 31])
        images = {m: render(subject, m, cfg.render_size, cfg.seed, cfg.sites) for m in MODALITIES}
        yield from subject_samples(cfg, subject, images, bool(coins[subject.index]), rng)
        subject.labels = np.zeros((1, 1), np.uint8)  # the label map is not needed any more
