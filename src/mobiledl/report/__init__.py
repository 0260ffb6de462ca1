"""Self-contained HTML reports: tables and inline SVG plots, no external assets.

``HtmlReport`` is the building block; ``write_run_report`` renders a recipe run (step
table, accuracy-vs-latency and accuracy-vs-size plots, per-layer profile, sensitivity).
"""

from mobiledl.report.html import HtmlReport, measurement_rows
from mobiledl.report.run import RunReport, Sensitivity, StepRow, write_run_report

__all__ = [
    "HtmlReport",
    "RunReport",
    "Sensitivity",
    "StepRow",
    "measurement_rows",
    "write_run_report",
]
