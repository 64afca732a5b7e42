"""Reporting: per-sample rows -> tables with intervals (tables.py), figures (figures.py) and report.html (html.py)."""
