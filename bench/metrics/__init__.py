"""Metrics: per-sample (stored in each row) and set-level (computed when tables are built).

Metric names are constants; the tables know each metric's direction from here.
"""

PIXEL_MAD = "pixel_mad"

# name -> True if higher is better. Columns of samples.csv that tables aggregate, in table order.
PER_SAMPLE_METRICS: dict[str, bool] = {
    PIXEL_MAD: False,
}
