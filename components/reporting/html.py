"""One self-contained static HTML page of a flow run (``medtune report RUN_ID``).

    from components.tracking.run_report import load_run_record
    from components.reporting import render_report
    Path("report.html").write_text(render_report(load_run_record(uri, run_id)))

The page has no scripts and loads nothing: a Content-Security-Policy allows only inline styles and ``data:``
images, so it opens the same from a mail attachment, a CI artifact or an air-gapped share. Sections, each with a
stable ``id`` for tests and links: ``summary``, ``decision``, ``history`` (the registered model's champion
timeline from the promotion journal, when there is one; the rows of this run's version in bold), ``safety``,
``timeline`` (the stage runs as an inline
SVG bar chart on one time axis), ``metrics`` (each stage's latest values; per-slice metrics, whose names hold
``key:value`` as the evaluation logs them, are folded into a ``<details>``), ``plots`` (the stage runs' PNG
artifacts, base64). Every value read from MLflow is HTML-escaped. Numbers are shown by :func:`format_value`.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Iterable, Sequence
from html import escape

from components.tracking.run_report import PromotionRecord, RunRecord, SafetyRecord, StageRecord

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STATUS_COLOURS = {"FINISHED": "#2e7d32", "FAILED": "#c62828", "KILLED": "#6d4c41", "RUNNING": "#1565c0"}
DECISION_CLASSES = {"promoted": "ok", "refused": "bad", "skipped": "muted"}
OUTCOME_CLASSES = {**DECISION_CLASSES, "completed": "ok", "rolled back": "bad", "unfinished": "bad"}
HISTORY_ROWS = 50
HEADLINE_TAGS = ("data_version", "config_hash", "git_commit", "git_dirty", "medtune.flow")

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} code{font-size:.95em}
.badge{display:inline-block;padding:.15em .6em;border-radius:.3em;color:#fff;font-weight:600}
.ok{background:#2e7d32} .bad{background:#c62828} .muted{background:#757575}
figure{display:inline-block;margin:.5em;vertical-align:top} figure img{max-width:520px;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555} .note{color:#555}
"""


def format_value(value: float) -> str:
    """How a metric value is printed: 4 significant digits, integers as integers, nan/inf as Python spells them."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _cell(value: object) -> str:
    """A gate's value, threshold or margin: numbers as :func:`format_value`, None as a dash, text escaped."""
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_value(float(value))
    return escape(str(value))


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(head: Sequence[str] | None, rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    out = ["<table>"]
    if head:
        out += ["<thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        cells = (f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _summary(record: RunRecord) -> str:
    seconds = None if record.end_ms is None else (record.end_ms - record.start_ms) / 1000
    rows = [
        ("run", f"<code>{escape(record.run_id)}</code> ({escape(record.name)})"),
        ("experiment", escape(record.experiment)),
        ("status", escape(record.status)),
        ("started", _utc(record.start_ms)),
        ("duration", "-" if seconds is None else f"{seconds:.1f} s"),
        *((k, f"<code>{escape(record.tags[k])}</code>") for k in HEADLINE_TAGS if k in record.tags),
    ]
    if "medtune.retrain.skipped" in record.tags:
        rows.append(("early exit", escape(record.tags["medtune.retrain.skipped"])))
    return '<section id="summary">' + _table(None, rows) + "</section>"


def _decision(promotion: PromotionRecord | None) -> str:
    head = '<section id="decision"><h2>Promotion decision</h2>'
    if promotion is None:
        return head + '<p><span class="badge muted">no promotion recorded</span></p></section>'
    css = DECISION_CLASSES.get(promotion.decision, "muted")
    parts = [head, f'<p><span class="badge {css}">{escape(promotion.decision)}</span>']
    if promotion.registered_model:
        parts.append(f" {escape(promotion.registered_model)} version {escape(promotion.version or '?')}")
    parts.append("</p>")
    if promotion.failed_gates:
        parts.append("<p>failed gates: " + ", ".join(f"<b>{escape(g)}</b>" for g in promotion.failed_gates) + "</p>")
    if promotion.champion_before is not None or promotion.champion_after is not None:
        parts.append(
            f"<p>champion before: {escape(str(promotion.champion_before))}, "
            f"after: {escape(str(promotion.champion_after))}</p>"
        )
    if promotion.gates:
        rows = [
            (
                escape(str(g.get("name", ""))),
                "pass" if g.get("passed") else "fail",
                _cell(g.get("value")),
                _cell(g.get("threshold")),
                _cell(g.get("margin")),
                escape(str(g.get("detail", ""))),
            )
            for g in promotion.gates
        ]
        parts.append(_table(("gate", "result", "value", "threshold", "margin", "detail"), rows))
    return "".join(parts) + "</section>"


def _history(record: RunRecord) -> str:
    """The champion timeline as ``medtune history`` prints it, newest last (at most :data:`HISTORY_ROWS`)."""
    if not record.timeline:
        return ""
    mine = record.promotion.version if record.promotion else None
    shown = record.timeline[-HISTORY_ROWS:]
    rows = []
    for r in shown:
        cells = [
            escape(r.time.replace("T", " ").replace("Z", " UTC")),
            escape(r.version),
            f'<span class="badge {OUTCOME_CLASSES.get(r.outcome, "muted")}">{escape(r.outcome)}</span>',
            escape(r.champion_before or "none"),
            "-" if r.outcome == "unfinished" else escape(r.champion_after or "none"),
            escape(", ".join(r.failed_gates)) or "-",
            f"<code>{escape((r.policy_sha256 or '-')[:12])}</code>",
            escape(f"{r.who} ({r.command})" if r.command else r.who),
            escape(r.note),
        ]
        if r.version == mine:
            cells[1] = f"<b>{cells[1]}</b>"
        rows.append(cells)
    head = ("time", "version", "decision", "previous champion", "champion after", "failed gates", "policy sha256",
            "who", "note")  # fmt: skip
    count = f"{escape(record.timeline_model)}: {len(record.timeline)} decision(s) in the promotion journal"
    parts = ['<section id="history"><h2>Champion timeline</h2>', f"<p>{count}"]
    if len(shown) < len(record.timeline):
        parts.append(f", the last {len(shown)} shown (all: <code>medtune history</code>)")
    parts.append("</p>" + _table(head, rows) + "</section>")
    return "".join(parts)


def _safety(safety: SafetyRecord | None) -> str:
    head = '<section id="safety"><h2>Safety grades</h2>'
    if safety is None:
        return head + '<p class="note">no safety stage in this run</p></section>'
    parts = [head, f'<p>overall: <b class="grade">{escape(safety.overall)}</b>']
    if safety.version:
        parts.append(f' <span class="note">(grading {escape(safety.version)})</span>')
    parts.append("</p>")

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    rows = [
        (escape(h.hazard), escape(h.name), escape(h.grade), str(h.n), num(h.u), f"[{num(h.ci_low)}, {num(h.ci_high)}]")
        for h in safety.hazards
    ]
    if rows:
        parts.append(_table(("hazard", "name", "grade", "n", "unsafe rate", "95% interval"), rows, numeric=(3, 4)))
    return "".join(parts) + "</section>"


def timeline_svg(stages: Sequence[StageRecord], *, width: int = 900, row: int = 26) -> str:
    """The stage runs as horizontal bars on one time axis (seconds since the first stage started)."""
    if not stages:
        return '<p class="note">no stage runs</p>'
    t0 = min(s.start_ms for s in stages)
    t1 = max(s.end_ms if s.end_ms is not None else s.start_ms for s in stages)
    span = max(t1 - t0, 1)
    label_w, pad = 110, 60
    plot_w = width - label_w - pad
    height = row * len(stages) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="stage timeline">'
    ]
    for i, s in enumerate(stages):
        y = i * row + 4
        x = label_w + plot_w * (s.start_ms - t0) / span
        end = s.end_ms if s.end_ms is not None else t1
        w = max(plot_w * (end - s.start_ms) / span, 2.0)
        colour = STATUS_COLOURS.get(s.status, "#757575")
        secs = "running" if s.seconds is None else f"{s.seconds:.1f} s"
        out.append(
            f'<g class="stage"><text x="{label_w - 6}" y="{y + row / 2 + 1:.0f}" text-anchor="end" '
            f'font-size="13">{escape(s.name)}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 8}" fill="{colour}">'
            f"<title>{escape(s.name)}: {escape(s.status)}, {secs}</title></rect>"
            f'<text x="{x + w + 4:.1f}" y="{y + row / 2 + 1:.0f}" font-size="12" fill="#444">{secs}</text></g>'
        )
    axis_y = row * len(stages) + 12
    out.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#999"/>')
    for k in range(5):
        x = label_w + plot_w * k / 4
        out.append(
            f'<text x="{x:.1f}" y="{axis_y + 14}" font-size="11" text-anchor="middle" fill="#666">'
            f"{span / 1000 * k / 4:.0f} s</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _metrics(record: RunRecord) -> str:
    parts = ['<section id="metrics"><h2>Metrics</h2>']
    groups = [("run", record.metrics)] + [(s.name, s.metrics) for s in record.stages]
    for name, metrics in groups:
        if not metrics:
            continue
        main = sorted((k, v) for k, v in metrics.items() if ":" not in k)
        sliced = sorted((k, v) for k, v in metrics.items() if ":" in k)
        parts.append(f'<h3 id="metrics-{escape(name)}">{escape(name)}</h3>')
        parts.append(_table(("metric", "value"), ((escape(k), format_value(v)) for k, v in main), numeric=(1,)))
        if sliced:
            parts.append(f"<details><summary>{len(sliced)} per-slice metrics</summary>")
            parts.append(_table(("metric", "value"), ((escape(k), format_value(v)) for k, v in sliced), numeric=(1,)))
            parts.append("</details>")
    return "".join(parts) + "</section>"


def _plots(record: RunRecord) -> str:
    parts = ['<section id="plots"><h2>Plots</h2>']
    if not record.plots:
        parts.append('<p class="note">no plots logged</p>')
    for plot in record.plots:
        data = base64.b64encode(plot.png).decode("ascii")
        caption = f"{plot.stage}: {plot.path}"
        parts.append(
            f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return "".join(parts) + "</section>"


def render_report(record: RunRecord) -> str:
    """The whole page as one string (UTF-8 HTML5)."""
    title = f"medtune {record.name} {record.run_id[:8]}"
    body = [
        f"<h1>{escape(record.name)} run <code>{escape(record.run_id[:12])}</code></h1>",
        _summary(record),
        _decision(record.promotion),
        _history(record),
        _safety(record.safety),
        '<section id="timeline"><h2>Stage timeline</h2>' + timeline_svg(record.stages) + "</section>",
        _metrics(record),
        _plots(record),
        f'<p class="note">Generated by medtune from {escape(record.tracking_uri)}.</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
