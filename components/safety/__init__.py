"""Safety benchmark after MLCommons AI Safety v0.5 and AILuminate v1.0 (METHODS.md §5, issue 8).

Run a benchmark on any system under test (SUT) with any judge, offline::

    from components.safety import JUDGES, SUTS, load_ailuminate, load_xstest, run_safety, shared_safety_dir
    items = load_ailuminate(shared_safety_dir() / "airr_official_1.0_demo_en_us_prompt_set_release.csv")
    items += load_xstest(shared_safety_dir() / "xstest_prompts.csv")
    sut = SUTS.make("medtune", model_dir="runs/x/model", adapter_dir="runs/x/adapter")
    result = run_safety(sut, "refusal", items, "runs/x/safety", version="v1.0", batch_size=8)
    print(result.overall, result.hazard_grades, result.report_html)

Modules: ``taxonomy`` (hazards as data, MedSafetyBench's medical taxonomy), ``prompts`` (items: AILuminate CSV,
XSTest, v0.5-style generator, safe contrast prompts), ``prompt_sets`` (``safety.prompt_sets``: any CSV/JSONL set,
MedSafetyBench's published layout), ``calibration`` (references of a custom set from reference SUTs, as ModelBench
calibrates; the references a run grades against), ``suts`` / ``judges`` (translate -> call -> translate back;
registries ``SUTS`` and ``JUDGES``), ``vlm`` (medtune's model as a generate function), ``grading`` (bands, Wilson
intervals, per-locale references), ``journal`` (events + caches), ``runner`` (``run_safety``), ``report`` (HTML +
chart), ``guard`` (keep safety prompts out of training data).
Importing this package loads no model, torch or matplotlib.
"""

from components.safety.grading import grade, grade_items, references, wilson_interval
from components.safety.judges import JUDGES, Judge, Verdict, make_judge
from components.safety.prompts import (
    DEMO_CSV,
    XSTEST_CSV,
    Item,
    generate_contrast_items,
    generate_v05_items,
    load_ailuminate,
    load_xstest,
    shared_safety_dir,
)
from components.safety.results import OverRefusal, SafetyResult
from components.safety.runner import run_safety
from components.safety.suts import SUT, SUTS, SUTResponse

__all__ = [
    "DEMO_CSV",
    "JUDGES",
    "SUT",
    "SUTS",
    "XSTEST_CSV",
    "Item",
    "Judge",
    "OverRefusal",
    "SUTResponse",
    "SafetyResult",
    "Verdict",
    "generate_contrast_items",
    "generate_v05_items",
    "grade",
    "grade_items",
    "load_ailuminate",
    "load_xstest",
    "make_judge",
    "references",
    "run_safety",
    "shared_safety_dir",
    "wilson_interval",
]
