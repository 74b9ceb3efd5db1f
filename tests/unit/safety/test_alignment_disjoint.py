"""The safety-alignment training data is disjoint from every evaluation set (issue 17, item 4).

No prompt (or answer) the source can make, at any seed or count, shares a run of N = 8 words with any evaluation
prompt: medtune's v0.5-style generator (every combination of every hazard it covers, so every template, persona and
fragment, whatever the seed), medtune's safe contrast prompts (every type, template and fragment), the AILuminate
demo CSV and XSTest (../shared/data/safety; skipped where absent).
Words are compared after the build guard's normalisation (NFKC, case folding, runs of non-alphanumerics as one
space: :func:`components.safety.guard.normalise`).

Why 8: it is the guard's own containment length (``MIN_CONTAINED_WORDS``), the rule by which the build refuses a
record that contains an evaluation prompt; and below it the shared runs are stock phrasing, not content. Requests
share such phrasing with any prompt set ("what steps should i take to", 6 words, is also in XSTest); a run of 8
words reaches into what is asked. At the time of writing the longest shared run is 6 words (AILuminate, XSTest, the
contrast prompts: "a good way to make a") and 5 (the v0.5 generator); ``test_longest_shared_runs_are_reported``
prints them. A contrast prompt that shared 8 words would be reworded there, not in the training source.

.venv/bin/pytest tests/unit/safety/test_alignment_disjoint.py -q -s
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import pytest

from components.data.sources.safety_alignment import HAZARDS, benign_items, hazardous_items
from components.safety.guard import (
    MIN_CONTAINED_WORDS,
    generated_prompt_texts,
    matches_safety_prompt,
    normalise,
    safety_prompt_index,
)
from components.safety.prompts import (
    DEMO_CSV,
    XSTEST_CSV,
    contrast_capacity,
    contrast_types,
    generate_contrast_items,
    generate_v05_items,
    load_ailuminate,
    load_xstest,
    v05_capacity,
)
from tests.conftest import shared_data

N = 8
assert N == MIN_CONTAINED_WORDS  # the build guard's containment rule; see the module docstring


@cache
def training_texts() -> tuple[str, ...]:
    """Every prompt and answer the source can make (all templates x all fragments: a superset of any sample)."""
    items = [i for h in HAZARDS for groups in hazardous_items(h).values() for group in groups for i in group]
    items += [i for group in benign_items() for i in group]
    return tuple(sorted({t for i in items for t in (i.prompt, i.answer)}))


def v05_texts() -> list[str]:
    items = generate_v05_items(None)  # every combination: every template, persona and fragment of every hazard
    assert len(items) == sum(v05_capacity(h) for h in {i.hazard for i in items})
    assert {i.hazard for i in items} == set(HAZARDS)
    return [i.text for i in items]


def contrast_texts() -> list[str]:
    items = generate_contrast_items(None)  # every combination: every type, template and fragment
    assert len(items) == sum(contrast_capacity(t) for t in contrast_types()) == len({i.text for i in items})
    return [i.text for i in items]


def grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[k : k + n]) for k in range(len(words) - n + 1)}


def shared_runs(evaluation: Iterable[str], n: int) -> dict[str, str]:
    """Runs of ``n`` words a training text shares with an evaluation prompt: run -> the training text."""
    index: set[tuple[str, ...]] = set()
    for text in evaluation:
        index |= grams(normalise(text), n)
    return {" ".join(g): text for text in training_texts() for g in grams(normalise(text), n) if g in index}


def longest_shared_run(evaluation: list[str]) -> int:
    n = 1
    while shared_runs(evaluation, n + 1):
        n += 1
    return n


def test_the_training_texts_cover_both_labels() -> None:
    texts = training_texts()
    assert len(texts) > 2000 and any(t.startswith("I cannot help") for t in texts)


def test_no_shared_8_word_run_with_the_v05_generator() -> None:
    assert shared_runs(v05_texts(), N) == {}


def test_no_shared_8_word_run_with_the_contrast_prompts() -> None:
    assert shared_runs(contrast_texts(), N) == {}
    assert longest_shared_run(contrast_texts()) < N


def test_the_build_guard_over_the_generators_passes_every_training_text() -> None:
    """The build always indexes every generated prompt (v0.5-style and contrast); no training text matches one."""
    texts = generated_prompt_texts()
    assert set(contrast_texts()) <= set(texts) and set(v05_texts()) <= set(texts)
    index = safety_prompt_index([], extra_texts=texts)
    assert [t for t in training_texts() if matches_safety_prompt(t, index)] == []


@pytest.mark.shared_data
def test_no_shared_8_word_run_with_the_ailuminate_demo_set() -> None:
    prompts = [i.text for i in load_ailuminate(shared_data("safety", DEMO_CSV))]
    assert len(prompts) == 1200
    assert shared_runs(prompts, N) == {}


@pytest.mark.shared_data
def test_no_shared_8_word_run_with_xstest() -> None:
    prompts = [i.text for i in load_xstest(shared_data("safety", XSTEST_CSV))]
    assert len(prompts) == 450  # 250 safe, 200 unsafe: both halves are evaluation prompts
    assert shared_runs(prompts, N) == {}


@pytest.mark.shared_data
def test_the_build_guard_passes_every_training_text() -> None:
    """Nothing the source makes would be quarantined by the build's guard over all three evaluation sets."""
    index = safety_prompt_index([shared_data("safety")], extra_texts=generated_prompt_texts())
    assert [t for t in training_texts() if matches_safety_prompt(t, index)] == []


@pytest.mark.shared_data
def test_longest_shared_runs_are_reported() -> None:
    sets = {
        "v0.5 generator": v05_texts(),
        "contrast prompts": contrast_texts(),
        "AILuminate demo": [i.text for i in load_ailuminate(shared_data("safety", DEMO_CSV))],
        "XSTest": [i.text for i in load_xstest(shared_data("safety", XSTEST_CSV))],
    }
    longest = {name: longest_shared_run(texts) for name, texts in sets.items()}
    print(f"\nlongest run of words shared with an evaluation prompt ({len(training_texts())} training texts):")
    for name, n in longest.items():
        print(f"  {name}: {n} words, e.g. {sorted(shared_runs(sets[name], n))[:3]}")
    assert max(longest.values()) < N
