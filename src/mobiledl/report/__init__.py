"""Self-contained HTML reports: tables and inline SVG plots, no external assets."""

from mobiledl.report.html import HtmlReport, measurement_rows

__all__ = ["HtmlReport", "measurement_rows"]
