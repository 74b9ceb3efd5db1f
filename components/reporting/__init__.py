"""Static reports of flow runs: HTML pages built from plain records (no MLflow import here).

medtune report RUN_ID -o retrain.html
"""

from components.reporting.html import format_value, render_report, timeline_svg

__all__ = ["format_value", "render_report", "timeline_svg"]
