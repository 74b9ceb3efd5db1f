"""The safety report: one self-contained HTML page that explains every grade, and a bar chart of the hazard grades.

    from components.safety.report import write_report, grade_chart
    html_path, png_path = write_report(result, run_dir)      # report.html + hazard_grades.png

For each hazard the page shows u (unsafe/n), its Wilson interval, r (the reference's unsafe fraction and where it
comes from), u/r, the band and the chain of rule checks that chose it, the band range across the interval (how
sure the grade is), the personas pooled, and example exchanges (unsafe first); then over-refusal: the safe probes
refused (XSTest's and medtune's contrast prompts, pooled and per set) and per type. The page has no external assets:
the chart is embedded as a data URI (and also written beside it as PNG); matplotlib runs on the Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from pathlib import Path

from components.safety.grading import BANDS, Score, reference_set
from components.safety.results import Example, SafetyResult
from components.safety.taxonomy import CONTRAST, OVER_REFUSAL_SETS, XSTEST, hazard_name

REPORT_FILE = "report.html"
CHART_FILE = "hazard_grades.png"
COLOURS = {1: "#1a9850", 2: "#91cf60", 3: "#fee08b", 4: "#fc8d59", 5: "#d73027"}
SNIPPET = 400
SET_NAMES = {XSTEST: "XSTest", CONTRAST: "medtune contrast prompts"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:72rem;
color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #ccc;padding:.3rem .5rem;
text-align:left;vertical-align:top;font-size:.9rem}th{background:#f3f3f3}
.grade{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;font-weight:600}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem 1rem}
.ex{border:1px solid #ddd;border-radius:.3rem;padding:.4rem .7rem;margin:.4rem 0;font-size:.85rem}
.ex pre{white-space:pre-wrap;margin:.2rem 0;font-family:inherit}
.small{color:#666;font-size:.85rem}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _pct3(x: float) -> str:
    """Three significant digits: references such as 0.262% need more than two decimals."""
    return f"{x * 100:.3g}%"


def _badge(label: str, rank: int) -> str:
    return f'<span class="grade" style="background:{COLOURS[rank]}">{_e(label)}</span>'


def _cut(text: str) -> str:
    return text if len(text) <= SNIPPET else text[:SNIPPET] + " [...]"


def grade_chart(result: SafetyResult, path: Path) -> bytes:
    """A horizontal bar per graded hazard (and overall): length = grade rank (1 best .. 5 worst), labelled with u."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert result.grades is not None
    scores = [*result.grades.hazards, result.grades.overall]
    bands = BANDS[result.version]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(scores) + 1.4), dpi=100)
    names = [f"{s.name} ({s.hazard})" if s.hazard != "overall" else "OVERALL" for s in scores]
    ranks = [s.band.rank for s in scores]
    ax.barh(range(len(scores)), ranks, color=[COLOURS[r] for r in ranks], edgecolor="#444")
    for y, s in enumerate(scores):
        ax.text(s.band.rank + 0.05, y, f"{s.band.label}  u={_pct(s.u)}", va="center", fontsize=8)
    ax.set_yticks(range(len(scores)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 7.5)
    ax.set_xticks([b.rank for b in bands], [b.code for b in bands])
    ax.set_xlabel(f"{result.version} grade (longer = riskier)")
    ax.set_title(f"Hazard grades: {result.sut}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def _score_row(s: Score) -> str:
    lo, hi = s.ci
    rng = s.ci_bands[0].label if s.ci_bands[0] == s.ci_bands[1] else f"{s.ci_bands[0].label} .. {s.ci_bands[1].label}"
    return (
        f"<tr><td>{_e(s.name)} <span class='small'>({_e(s.hazard)})</span></td><td>{s.n}</td><td>{s.unsafe}</td>"
        f"<td>{_pct(s.u)}</td><td>{_pct(lo)} – {_pct(hi)}</td><td>{_pct3(float(s.r))}</td><td>{s.ratio:.3g}</td>"
        f"<td>{_badge(s.band.label, s.band.rank)}</td><td>{_e(s.band.rule)}</td><td>{_e(rng)}</td></tr>"
    )


def _share(k: int, n: int) -> str:
    return f"<td>{k}/{n} = {_pct(k / n)}</td>" if n else "<td>none asked</td>"


def _examples(examples: list[Example]) -> str:
    parts = []
    for ex in examples:
        if ex.hazard in OVER_REFUSAL_SETS or ex.label == "safe":
            verdict = "refused" if ex.refused else "answered"
        else:
            verdict = "SAFE" if ex.safe else "UNSAFE"
        extra = f" categories {', '.join(ex.categories)}" if ex.categories else ""
        extra += f" ({ex.error})" if ex.error else ""
        parts.append(
            f"<div class='ex'><b>{_e(verdict)}</b>{_e(extra)} <span class='small'>{_e(ex.uid)} · {_e(ex.hazard)} · "
            f"{_e(ex.persona)} · label {_e(ex.label)}</span><pre><b>Prompt:</b> {_e(_cut(ex.prompt))}</pre>"
            f"<pre><b>Response:</b> {_e(_cut(ex.response))}</pre></div>"
        )
    return "".join(parts) or "<p class='small'>none</p>"


def _reference_label(result: SafetyResult) -> str:
    g = result.grades
    return "none (no graded items)" if g is None or g.reference is None else g.reference.label


def _errors(result: SafetyResult) -> str:
    e = result.errors
    if not e.get("items"):
        return "none"
    return (
        f"{e['items']} item(s) failed after retries ({e.get('sut', 0)} SUT, {e.get('judge', 0)} judge), "
        f"{e['share']:.1%} of the run (allowed {e.get('max_share', 0):.1%}); left out of the grades"
    )


def render_html(result: SafetyResult, chart_png: bytes | None) -> str:
    v = result.version
    out = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Safety report {_e(result.sut)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Safety report ({_e(v)})</h1>",
        "<p class='warn'>Content warning: the examples below quote prompts written to elicit hazardous output, "
        "and the system's answers to them.</p>",
        "<table>",
        f"<tr><th>System under test</th><td>{_e(result.sut)}</td></tr>",
        f"<tr><th>Judge</th><td>{_e(result.judge)}</td></tr>",
        f"<tr><th>Items</th><td>{result.n_items}</td></tr>",
        f"<tr><th>Locale</th><td>{_e(result.locale)}</td></tr>",
        f"<tr><th>Reference set</th><td>{_e(_reference_label(result))}</td></tr>",
        f"<tr><th>Errors</th><td>{_e(_errors(result))}</td></tr>",
        f"<tr><th>Run</th><td>{_e(datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC'))}, {result.elapsed_s:.1f} s; "
        f"calls {_e(result.calls)}</td></tr>",
        "</table>",
    ]
    for note in result.notes:
        out.append(f"<p class='small'>Note: {_e(note)}</p>")
    g = result.grades
    if g is not None:
        o = g.overall
        out += [
            f"<h2>Overall: {_badge(o.band.label, o.band.rank)}</h2>",
            f"<p>{_e(o.note)}</p><p>Rule: {_e('; '.join(o.steps))}.</p>",
            f"<p>Pooled u = {o.unsafe}/{o.n} = {_pct(o.u)} (95% Wilson interval {_pct(o.ci[0])} – {_pct(o.ci[1])})"
            + (f"; r = {_pct3(float(o.r))}; u/r = {o.ratio:.3g}" if v == "v1.0" else "")
            + "</p>",
            "<h2>How the grades are made</h2><table><tr><th>grade</th><th>rule (checked in order for v1.0: "
            "Excellent, Poor, Very Good, Fair, else Good; for v0.5 from Low to High)</th></tr>",
        ]
        out += [f"<tr><td>{_badge(b.label, b.rank)}</td><td>{_e(b.rule)}</td></tr>" for b in BANDS[v]]
        out += [
            "</table>",
            f"<p class='small'>u = unsafe responses / items of the hazard, all personas pooled. r = 1 − the "
            f"reference safe rate. Reference: {_e((g.reference or reference_set(v)).source)} Interval: Wilson score, "
            f"{g.confidence:.0%}. 'Range in CI' is the grade at the interval's two ends: a range means more items "
            "would be needed to be sure of the grade.</p>",
        ]
        if chart_png is not None:
            data = base64.b64encode(chart_png).decode("ascii")
            out.append(f"<img alt='hazard grades' src='data:image/png;base64,{data}'>")
        out.append(
            "<h2>Hazards</h2><table><tr><th>hazard</th><th>n</th><th>unsafe</th><th>u</th><th>95% CI</th><th>r</th>"
            "<th>u/r</th><th>grade</th><th>band rule</th><th>range in CI</th></tr>"
        )
        out += [_score_row(s) for s in g.hazards]
        out.append("</table>")
        for s in g.hazards:
            personas = ", ".join(f"{p}: {k}/{n} unsafe" for p, (n, k) in sorted(s.personas.items()))
            out += [
                f"<h3>{_e(s.name)} ({_e(s.hazard)}): {_badge(s.band.label, s.band.rank)}</h3>",
                f"<p>u = {s.unsafe}/{s.n} = {_pct(s.u)}; r = {_pct3(float(s.r))}. Checks: {_e('; '.join(s.steps))} "
                f"→ <b>{_e(s.band.label)}</b>. Personas: {_e(personas)}.</p>",
                _examples(result.examples.get(s.hazard, [])),
            ]
        if g.unreferenced:
            out.append(
                "<h2>Not graded: no reference</h2><p>No reference for these hazards (run <code>medtune safety "
                "calibrate</code> on the set); unsafe fraction only:</p><table><tr><th>hazard</th><th>n</th>"
                "<th>unsafe</th><th>u</th><th>95% CI</th></tr>"
            )
            out += [
                f"<tr><td>{_e(x.name)} ({_e(x.hazard)})</td><td>{x.n}</td><td>{x.unsafe}</td><td>{_pct(x.u)}</td>"
                f"<td>{_pct(x.ci[0])} – {_pct(x.ci[1])}</td></tr>"
                for x in g.unreferenced
            ]
            out.append("</table>")
        if g.ungraded:
            rows = ", ".join(f"{hazard_name(h)} ({h}): {n}" for h, n in sorted(g.ungraded.items()))
            out.append(f"<h2>Not graded</h2><p>{_e(v)} does not test these hazards: {_e(rows)}.</p>")
    o2 = result.over_refusal
    if o2 is not None:
        sets = [name for name in OVER_REFUSAL_SETS if name in o2.by_set]
        names = [SET_NAMES.get(name, name) for name in sets]
        table = [(name, o2.by_set[key]) for name, key in zip(names, sets, strict=True)]
        if len(table) != 1:
            table.insert(0, ("all sets pooled", o2))
        out += [
            "<h2>Over-refusal" + (f" ({_e(', '.join(names))})" if names else "") + "</h2>",
            "<p>Refusals found by the refusal detector. Safe prompts should be answered; unsafe contrast prompts "
            "refused. The promotion gate reads the pooled share of safe prompts refused.</p><table>",
            "<tr><th>set</th><th>safe prompts refused</th><th>unsafe prompts answered</th></tr>",
        ]
        for name, part in table:
            cells = _share(part.safe_refused, part.safe_n) + _share(part.unsafe_answered, part.unsafe_n)
            out.append(f"<tr><td>{_e(name)}</td>{cells}</tr>")
        out.append("</table><table><tr><th>type</th><th>n</th><th>refused</th></tr>")
        out += [f"<tr><td>{_e(t)}</td><td>{n}</td><td>{k}</td></tr>" for t, (n, k) in sorted(o2.by_type.items())]
        out.append("</table>")
        for name, key in zip(names, sets, strict=True):
            out += [f"<h3>{_e(name)}</h3>", _examples(result.examples.get(key, []))]
    out.append("</body></html>")
    return "\n".join(out)


def write_report(result: SafetyResult, run_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``report.html`` (and ``hazard_grades.png`` when there are grades); return their paths."""
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    chart_path = folder / CHART_FILE if result.grades is not None else None
    png = grade_chart(result, chart_path) if chart_path is not None else None
    html_path = folder / REPORT_FILE
    html_path.write_text(render_html(result, png), encoding="utf-8")
    return html_path, chart_path
