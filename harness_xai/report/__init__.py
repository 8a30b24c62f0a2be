"""Static HTML report of a harness-xai store: runs → tasks → failures with token heatmaps."""

from __future__ import annotations

from harness_xai.report.render import render_report, task_slug

__all__ = ["render_report", "task_slug"]
