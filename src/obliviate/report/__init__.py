"""Reports: result tables (markdown/CSV) and, later, HTML with plots."""

from obliviate.report.table import format_table

__all__ = ["format_table"]
