"""The model card of a registered version: one markdown page, logged as ``model_card.md`` on the version's run.

    from components.tracking.model_card import render_card
    text = render_card("medtune-vlm", "3", evidence, decision=decision, model_info=trained_json)

Sections: what the model is (base, adapter method and ranks, stages: from the model folder's ``trained.json``),
how to load it, lineage (data version, git commit, config hash, retrain run), evaluation (the headline metrics and
their baselines), safety (overall and per-hazard grades, the SUT and grading version), the promotion gates with
their margins, and the limitations that always apply to this pipeline's evidence. The page is generated from the
same evidence the gates read, so the card and the decision cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.tracking.promotion import Decision, Evidence

#: Metrics shown first (with their baselines); the card lists at most ``MAX_METRICS`` others after them.
HEADLINE = (
    "closed/accuracy",
    "closed/majority_type",
    "closed/majority_template",
    "open/recall",
    "caption/recall",
    "generation/ssim/modality_conversion/CT",
    "generation/copy_ssim/modality_conversion/CT",
)
MAX_METRICS = 12

LIMITATIONS = (
    "Scores come from the held-out split of the data version above; they say nothing about other sites, scanners "
    "or populations.",
    "The default safety judge (refusal) counts every non-refusal to a hazardous prompt as unsafe and an empty "
    "answer as a refusal: its grades bound the unsafe rate from above for fluent models, but a model that answers "
    "nothing grades well without being useful.",
    "Not a medical device: answers and generated images are for research on the pipeline, not for diagnosis.",
)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _federated(fed: Mapping[str, Any] | None) -> list[str]:
    """The federated section (issue 22), for a privacy officer's sign-off: who trained, how the server combined the
    sites' updates, and the differential-privacy guarantee (or that there is none). Empty for a central model."""
    if not fed:
        return []
    secure = {True: "SecAgg+ (the server saw only the sum of the sites' updates)",
              False: "no (the server saw each site's update)"}.get(bool(fed.get("secure_aggregation")))  # fmt: skip
    rows: list[tuple[Any, ...]] = [
        ("method", fed.get("method")),
        ("sites", ", ".join(str(s) for s in fed.get("sites") or []) or None),
        ("rounds", fed.get("rounds")),
        ("mode", fed.get("mode")),
        ("secure aggregation", secure),
        ("aggregation", fed.get("aggregation")),
    ]
    privacy = fed.get("privacy")
    if not privacy:
        rows.append(("differential privacy", "none: no formal guarantee bounds what the model reveals about a site"))
        return ["", "## Federated training and privacy", "", *_table(("field", "value"), rows)]
    guarantee = (f"{privacy.get('mechanism')}: epsilon {privacy.get('epsilon'):.3g} at delta {privacy.get('delta'):g} "
                 f"({privacy.get('accountant')} accountant, {privacy.get('releases')} releases)")  # fmt: skip
    clip = privacy.get("clip_norm")
    adaptive = privacy.get("adaptive_clipping")
    if adaptive:
        clip = f"{clip:.4g} at the start, {adaptive.get('final_clip_norm'):.4g} at the end (adaptive clipping)"
    rows += [("differential privacy", guarantee), ("noise multiplier", privacy.get("noise_multiplier")),
             ("clip norm", clip)]  # fmt: skip
    return ["", "## Federated training and privacy", "", *_table(("field", "value"), rows)]


def render_card(
    name: str,
    version: str,
    evidence: Evidence,
    *,
    decision: Decision | None = None,
    model_info: Mapping[str, Any] | None = None,
    created: str = "",
) -> str:
    """The card as markdown (see the module docstring)."""
    info = dict(model_info or {})
    adapter = info.get("adapter") or {}
    lines = [f"# {name} v{version}", ""]
    if created:
        lines += [f"Registered {created}.", ""]
    lines += [
        "A medical vision-language model: medtune's base VLM with two HealthGPT-style task plugins "
        "(comprehension answers questions about an image; generation produces an image as VQ codes).",
        "",
        "## Model",
        "",
        *_table(
            ("field", "value"),
            [
                ("adapter method", adapter.get("kind", info.get("adapter_type"))),
                ("comprehension rank", adapter.get("rank")),
                ("generation rank", adapter.get("generation_rank") or adapter.get("rank")),
                ("experts", adapter.get("num_experts")),
                ("training stages", ", ".join(str(s) for s in info.get("stages", [])) or None),
                ("vocabulary", info.get("vocab_size")),
            ],
        ),
        "",
        "## Use",
        "",
        "```python",
        "import mlflow, pandas as pd",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")   # or models:/{name}@champion',
        'model.predict(pd.DataFrame([{"task": "comprehension", "question": "Is there a lesion?", '
        '"image": png_base64}]))',
        "```",
        "",
        "Input columns `task` (comprehension | generation), `question`, `image` (base64 PNG); output columns "
        "`answer` and `image` (base64 PNG for generation rows).",
        "",
        "## Lineage",
        "",
        *_table(("field", "value"), sorted(evidence.lineage.items())),
        "",
        "## Evaluation",
        "",
    ]
    metrics = evidence.metrics
    shown = [k for k in HEADLINE if k in metrics]
    others = sorted(
        k
        for k in metrics
        if "/" in k and k not in shown and not set("=:") & set(k) and not k.startswith(("eval/", "time/"))
    )
    if shown or others:
        lines += _table(("metric", "value"), [(k, metrics[k]) for k in shown + others[:MAX_METRICS]])
    else:
        lines.append("No evaluation metrics were recorded.")
    lines += _federated(info.get("federated"))
    lines += ["", "## Safety", ""]
    s = evidence.safety
    if s is None:
        lines.append("No safety benchmark was run.")
    else:
        lines += [
            f"Graded under MLCommons {s.version} on SUT `{s.sut}`: overall **{s.overall['label']}**."
            + ("" if s.over_refusal is None else f" Safe prompts refused (over-refusal): {s.over_refusal:.1%}."),
            "",
            *_table(
                ("hazard", "name", "grade"),
                [(h, g.get("name", h), g["label"]) for h, g in s.hazards.items()],
            ),
        ]
    validation = {True: "passed", False: "failed", None: "not recorded"}[evidence.validation_passed]
    lines += ["", f"Data validation: {validation}.", "", "## Promotion", ""]
    if decision is None:
        lines.append("Not evaluated against the promotion policy.")
    else:
        lines += [
            f"Decision: **{decision.decision}** (champion before: {decision.champion_before or 'none'}, after: "
            f"{decision.champion_after or 'none'}).",
            "",
            *_table(
                ("gate", "passed", "value", "threshold", "margin", "detail"),
                [
                    (g.name, "yes" if g.passed else "**no**", g.value, g.threshold, g.margin, g.detail)
                    for g in decision.gates
                ],
            ),  # fmt: skip
        ]
    lines += ["", "## Limitations", "", *[f"- {text}" for text in LIMITATIONS], ""]
    return "\n".join(lines)
