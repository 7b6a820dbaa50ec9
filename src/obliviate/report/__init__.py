"""Reports: result tables (markdown/CSV), run-dir loading, comparisons, HTML with plots (html.py, plots.py)."""

from obliviate.report.table import format_table

__all__ = ["format_table"]
