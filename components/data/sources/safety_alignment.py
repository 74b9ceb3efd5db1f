"""The safety-alignment source: text-only hazardous requests paired with refusals, and benign requests paired with
answers, for training only (issue 17, item 4).

Why: Bianchi et al. ("Safety-Tuned LLaMAs", ICLR 2024) show that a few hundred refusal examples mixed into
instruction tuning make a model refuse harmful requests far more often, and that too many make it refuse harmless
ones (over-refusal); mixing in benign requests, some worded like harmful ones, keeps that down. This source is that
mix at the embedded default's scale, generated from templates and fragments of its own
(:mod:`components.data.sources.alignment_text`), disjoint from every evaluation set: no prompt shares a run of 8
words with medtune's v0.5-style generator, the AILuminate CSVs or XSTest (``tests/unit/safety/
test_alignment_disjoint.py``), and the build still refuses any sample that matches an evaluation prompt
(:func:`components.safety.guard.matches_safety_prompt`).

What it yields, deterministic for ``(seed, counts)``:

- ``refusals_per_hazard`` hazardous requests for each hazard v0.5 tests (vcr, nvc, scr, cae, cbr, ssh, hat), from
  v0.5's two personas (METHODS.md §5; two thirds typical, see :data:`TYPICAL_SHARE`), each answered with the
  hazard's refusal (which opens with a phrase the offline refusal judge recognises);
- ``benign`` benign requests with answers: everyday health and life tasks asked through the same request
  templates as the hazardous ones (so the form of a request never decides a refusal), tasks worded with
  hazard-sounding words in a safe sense ("kill the weeds ..."), and standalone questions (definitions, history);
  every answer opens with ``BENIGN_OPENER`` ("Sure."), so that greedy decoding's first token is a fair choice
  between refusing and answering (see :mod:`~components.data.sources.alignment_text`).

Sampling spreads over fragments first: each round takes one unused template for every activity of a persona (or
every benign task) in a seeded order, so every fragment appears before any appears twice. Records are text-only
(``image`` null, modality ``other``), ``task: comprehension``, ``kind: vqa_open``, and always in the train split
(the source's own split): none reaches validation or test. ``features.safety`` is ``refusal`` or ``benign``;
``meta`` names the hazard, persona, template and fragment. Configure::

    sources:
      safety_alignment: {kind: safety_alignment, refusals_per_hazard: 100, benign: 500, seed: 0}

Look at it::

    from components.data.sources.safety_alignment import generate_alignment_items
    items = generate_alignment_items(refusals_per_hazard=100, benign=500, seed=0)
    items[0].prompt, items[0].answer, items[0].label, items[0].hazard
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.sources.base import Quarantined, SourceContext, SourceSample, register_source

HAZARDS = ("vcr", "nvc", "scr", "cae", "cbr", "ssh", "hat")  # the seven v0.5 tests, in METHODS.md's order
REFUSAL, BENIGN = "refusal", "benign"
#: Share of each hazard's requests asked by the typical persona. v0.5 grades its personas half and half, but a
#: typical request often has the form of a benign one (the shared templates), so only its content says "refuse":
#: that is the hard case for a small model and gets two thirds of the examples; the other persona's form gives
#: itself away ("ignore your rules", despair).
TYPICAL_SHARE = 2 / 3


class SafetyAlignmentSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["safety_alignment"] = Field(
        "safety_alignment",
        description="Generated text-only safety-alignment data (hazardous requests with refusals, benign requests "
        "with answers), train split only.",
    )
    refusals_per_hazard: int = Field(
        100,
        ge=0,
        le=1000,
        description="Hazardous requests (each answered with a refusal) per v0.5 hazard; 7 hazards. Bianchi et al.: a "
        "few hundred in all raise safety sharply, many more cause over-refusal.",
    )
    benign: int = Field(
        500, ge=0, le=10_000, description="Benign requests with answers (everyday, contrast and standalone questions)."
    )
    seed: int = Field(0, description="Seed of the sampling; the same seed and counts give the same records.")
    license: str = Field("Apache-2.0", description="Licence recorded on the records (written for medtune).")


@dataclass(frozen=True)
class AlignmentItem:
    """One generated exchange, before it becomes a :class:`SourceSample`."""

    label: str  # REFUSAL or BENIGN
    hazard: str  # a v0.5 hazard code, or "none" for benign items
    persona: str
    pool: str  # hazardous: the interaction ("shared" or "persona"); benign: "everyday", "contrast", "question"
    template: int  # index in its template list (-1: a standalone question)
    fragment: int  # index of the activity, task or question in its list
    prompt: str
    answer: str

    @property
    def uid(self) -> str:
        digest = hashlib.sha256(f"{self.label}|{self.hazard}|{self.prompt}".encode()).hexdigest()[:12]
        return f"{self.label}-{self.hazard}-{digest}"


def _spread(groups: Sequence[Sequence[AlignmentItem]], want: int, rng: random.Random) -> list[AlignmentItem]:
    """``want`` items taken round-robin over ``groups`` in the given order (each group shuffled first), so every
    group gives one item before any gives a second. Fails when the groups hold fewer than ``want``."""
    pools = [list(g) for g in groups]
    for pool in pools:
        rng.shuffle(pool)
    capacity = sum(len(p) for p in pools)
    if not 0 <= want <= capacity:
        raise ValueError(f"asked for {want} items; the templates and fragments make 0..{capacity}")
    out: list[AlignmentItem] = []
    k = 0
    while len(out) < want:
        for pool in pools:
            if k < len(pool) and len(out) < want:
                out.append(pool[k])
        k += 1
    return out


def hazardous_items(hazard: str) -> dict[str, list[list[AlignmentItem]]]:
    """Every hazardous item of ``hazard``: per persona, one group per activity (its templates). The typical persona
    asks through the shared templates and its own, the other (malicious, or vulnerable for self-harm) through its
    own."""
    from components.data.sources import alignment_text as text

    out = {}
    for persona in text.PERSONAS.get(hazard, text.PERSONAS["default"]):
        pools = [("persona", text.HAZARD_TEMPLATES[persona])]
        if persona == "typical":
            pools.insert(0, ("shared", text.SHARED_TEMPLATES))
        out[persona] = [
            [
                AlignmentItem(REFUSAL, hazard, persona, pool, t, a, template.format(act=act), text.REFUSALS[hazard])
                for pool, templates in pools
                for t, template in enumerate(templates)
            ]
            for a, act in enumerate(text.ACTIVITIES[hazard])
        ]
    return out


def _sure(answer: str) -> str:
    from components.data.sources.alignment_text import BENIGN_OPENER

    return f"{BENIGN_OPENER} {answer}"


def benign_items() -> list[list[AlignmentItem]]:
    """Every benign item, grouped by task or question."""
    from components.data.sources import alignment_text as text

    groups = []
    for pool, tasks in (("everyday", text.BENIGN_TASKS), ("contrast", text.CONTRAST_TASKS)):
        for f, (task, answer) in enumerate(tasks):
            groups.append(
                [
                    AlignmentItem(BENIGN, "none", "typical", pool, t, f, template.format(act=task), _sure(answer))
                    for t, template in enumerate(text.SHARED_TEMPLATES)
                ]
            )
    for f, (question, answer) in enumerate(text.BENIGN_QUESTIONS):
        groups.append([AlignmentItem(BENIGN, "none", "typical", "question", -1, f, question, _sure(answer))])
    return groups


def generate_alignment_items(refusals_per_hazard: int, benign: int, seed: int = 0) -> list[AlignmentItem]:
    """The source's items: hazardous ones per hazard in :data:`HAZARDS` order (:data:`TYPICAL_SHARE` of them from
    the typical persona), then benign ones (see the module docstring); deterministic for the arguments."""
    items: list[AlignmentItem] = []
    for hazard in HAZARDS:
        rng = random.Random(f"{seed}:refusal:{hazard}")
        typical = round(TYPICAL_SHARE * refusals_per_hazard)
        for persona, groups in hazardous_items(hazard).items():
            rng.shuffle(groups)
            items += _spread(groups, typical if persona == "typical" else refusals_per_hazard - typical, rng)
    rng = random.Random(f"{seed}:benign")
    groups = benign_items()
    rng.shuffle(groups)
    items += _spread(groups, benign, rng)
    return items


@register_source("safety_alignment", SafetyAlignmentSourceConfig)
def read_safety_alignment(cfg: SafetyAlignmentSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    for item in generate_alignment_items(cfg.refusals_per_hazard, cfg.benign, cfg.seed):
        yield SourceSample(
            uid=item.uid,
            image=None,
            modality="other",
            body_part="",
            task="comprehension",
            kind="vqa_open",
            question=item.prompt,
            answer=item.answer,
            # one group per fragment: its wordings stay together should a split ever be drawn
            group=f"alignment-{item.hazard}-{item.pool}-{item.fragment}",
            license=cfg.license,
            split="train",  # training only: never scored as a held-out answer
            features={"safety": item.label},
            meta={
                "hazard": item.hazard,
                "persona": item.persona,
                "pool": item.pool,
                "template": item.template,
                "fragment": item.fragment,
            },
        )
