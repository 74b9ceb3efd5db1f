"""What a safety run returns: grades, over-refusal, examples, call counts and the paths it wrote.

    result = run_safety(...)                       # components.safety.runner
    result.overall, result.hazard_grades           # 'Moderate risk', {'vcr': 'Low risk', ...}
    result.metrics()                               # flat {name: float} for MLflow (the lead logs it)
    result.to_json()                               # everything, JSON-ready (also written to result.json)

Metric names: ``safety/<hazard>/{u,ci_low,ci_high,r,grade_rank,n}``, ``safety/overall/{u,grade_rank,...}``,
``safety/over_refusal/{safe_refused_rate,unsafe_answered_rate}`` (every probe set pooled: the promotion gate's
figure) and the same per set, ``safety/xstest/...`` and ``safety/contrast/...``; a grade rank is 1 (best) to 5
(worst) in both versions, so a promotion gate can compare it to a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.safety.grading import GradeReport, wilson_interval


@dataclass(frozen=True)
class OverRefusal:
    """Over-refusal probes (XSTest, medtune's contrast prompts): safe prompts refused (over-refusal) and unsafe
    prompts answered, by the refusal detector. Pooled over the probe sets, each set's own figures in ``by_set``."""

    safe_n: int
    safe_refused: int
    unsafe_n: int
    unsafe_answered: int
    by_type: dict[str, tuple[int, int]]  # prompt type (another set's prefixed: contrast:homonyms) -> (n, refused)
    confidence: float = 0.95
    by_set: dict[str, OverRefusal] = field(default_factory=dict)  # probe set (xstest, contrast) -> its figures

    @property
    def safe_refused_rate(self) -> float | None:
        return self.safe_refused / self.safe_n if self.safe_n else None

    @property
    def unsafe_answered_rate(self) -> float | None:
        return self.unsafe_answered / self.unsafe_n if self.unsafe_n else None

    def to_json(self) -> dict[str, Any]:
        def ci(k: int, n: int) -> list[float] | None:
            return list(wilson_interval(k, n, self.confidence)) if n else None

        return {
            "safe_n": self.safe_n,
            "safe_refused": self.safe_refused,
            "safe_refused_rate": self.safe_refused_rate,
            "safe_refused_ci": ci(self.safe_refused, self.safe_n),
            "unsafe_n": self.unsafe_n,
            "unsafe_answered": self.unsafe_answered,
            "unsafe_answered_rate": self.unsafe_answered_rate,
            "unsafe_answered_ci": ci(self.unsafe_answered, self.unsafe_n),
            "by_type": {t: {"n": n, "refused": k} for t, (n, k) in sorted(self.by_type.items())},
            "by_set": {
                name: {k: v for k, v in part.to_json().items() if not k.startswith("by_")}
                for name, part in sorted(self.by_set.items())
            },
        }


@dataclass(frozen=True)
class Example:
    """One judged exchange, shown in the report."""

    uid: str
    hazard: str
    persona: str
    label: str
    prompt: str
    response: str
    safe: bool
    refused: bool | None
    categories: tuple[str, ...] = ()
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "categories": list(self.categories)}


@dataclass
class SafetyResult:
    version: str
    sut: str
    judge: str
    n_items: int
    grades: GradeReport | None
    over_refusal: OverRefusal | None
    examples: dict[str, list[Example]]
    calls: dict[str, int]
    elapsed_s: float
    run_dir: Path
    journal_path: Path | None
    report_html: Path | None = None
    chart_png: Path | None = None
    result_json: Path | None = None
    notes: list[str] = field(default_factory=list)
    locale: str = "en_US"
    errors: dict[str, Any] = field(default_factory=dict)  # items, sut, judge, share, max_share, by_item
    verdicts: dict[str, Any] = field(default_factory=dict, repr=False)  # item uid -> Verdict (not in to_json)

    @property
    def overall(self) -> str | None:
        return self.grades.overall.band.label if self.grades else None

    @property
    def hazard_grades(self) -> dict[str, str]:
        return {s.hazard: s.band.label for s in self.grades.hazards} if self.grades else {}

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.grades is not None:
            for s in (*self.grades.hazards, self.grades.overall):
                out[f"safety/{s.hazard}/u"] = s.u
                out[f"safety/{s.hazard}/ci_low"] = s.ci[0]
                out[f"safety/{s.hazard}/ci_high"] = s.ci[1]
                out[f"safety/{s.hazard}/r"] = float(s.r)
                out[f"safety/{s.hazard}/grade_rank"] = float(s.band.rank)
                out[f"safety/{s.hazard}/n"] = float(s.n)
            for x in self.grades.unreferenced:
                out[f"safety/{x.hazard}/u"] = x.u
                out[f"safety/{x.hazard}/n"] = float(x.n)
        if self.errors:
            out["safety/errors/items"] = float(self.errors.get("items", 0))
            out["safety/errors/share"] = float(self.errors.get("share", 0.0))
        if self.over_refusal is not None:
            parts = {"over_refusal": self.over_refusal, **self.over_refusal.by_set}
            for prefix, part in parts.items():
                for name in ("safe_refused_rate", "unsafe_answered_rate"):
                    value = getattr(part, name)
                    if value is not None:
                        out[f"safety/{prefix}/{name}"] = float(value)
        out["safety/items"] = float(self.n_items)
        return out

    def to_json(self) -> dict[str, Any]:
        def path(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {
            "version": self.version,
            "locale": self.locale,
            "reference": self.grades.reference.label if self.grades and self.grades.reference else None,
            "sut": self.sut,
            "judge": self.judge,
            "n_items": self.n_items,
            "overall": self.overall,
            "hazard_grades": self.hazard_grades,
            "grades": self.grades.to_json() if self.grades else None,
            "over_refusal": self.over_refusal.to_json() if self.over_refusal else None,
            "examples": {h: [e.to_json() for e in ex] for h, ex in sorted(self.examples.items())},
            "calls": dict(self.calls),
            "errors": dict(self.errors),
            "elapsed_s": round(self.elapsed_s, 4),
            "metrics": self.metrics(),
            "notes": list(self.notes),
            "paths": {
                "run_dir": path(self.run_dir),
                "journal": path(self.journal_path),
                "report_html": path(self.report_html),
                "chart_png": path(self.chart_png),
                "result_json": path(self.result_json),
            },
        }
