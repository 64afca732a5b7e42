"""Metrics: per-sample (stored in each row) and set-level (computed when tables are built).

Metric names are constants; the tables know each metric's direction from here.
"""

PIXEL_MAD = "pixel_mad"
FID64_PAIR = "fid64_pair"  # the paper's per-pair "FID" (PAPER_SPEC §4.3)
CLIP_SCORE = "clip_score"  # 100 * max(cos, 0), open_clip
BG_PSNR = "bg_psnr"  # background preservation outside the subject mask (PIE-Bench style)
BG_SSIM = "bg_ssim"
# Set-level metrics (bench.metrics.set_level, computed by bench.aggregate): name -> True if higher is better.
FID2048 = "fid2048"
KID_MEAN = "kid_mean"
SET_LEVEL_METRICS: dict[str, bool] = {FID2048: False, KID_MEAN: False}

# name -> True if higher is better. Columns of samples.csv that tables aggregate, in table order.
PER_SAMPLE_METRICS: dict[str, bool] = {
    PIXEL_MAD: False,
    FID64_PAIR: False,
    CLIP_SCORE: True,
    BG_PSNR: True,
    BG_SSIM: True,
    # Toy world only (metrics=toy, bench/toy/metrics.py): the truth is known there.
    "mask_iou": True,  # the method's subject mask vs the true subject region
    "mask_iou_random": True,  # a random mask of the same area (chance level)
    "mask_iou_centre": True,  # the same number of cells nearest the centre (a data-free prior)
    "subject_ok": True,  # toy CLIP: prompted colour and shape
    "subject_ok_oracle": True,  # oracle segmenter: prompted colour and shape
    "true_bg_psnr": True,  # background kept, outside the true subject region
    # Subject truth (truth_record, bench/truth/record.py): how stable the truth itself is. NaN for an empty
    # truth (reason in truth_nan_reason), so the tables count those samples apart (`<metric>_nan`).
    "truth_iou_alt": True,  # the truth mask at its threshold vs at truth_record.alt_threshold
    "truth_iou_compare": True,  # the truth vs a second source (truth@truth_compare=...)
    "truth_mask_iou": True,  # the method's subject mask vs the truth
    "truth_mask_iou_random": True,  # a random mask of the same latent cells (chance level)
    "truth_bg_psnr": True,  # background kept, outside the truth
}

# Caps applied when tables aggregate (bench.reporting.tables.metric_values, the one place): a PSNR of identical
# pixels is inf in samples.csv; tables count it as PSNR_CAP_DB so a mean stays finite. Other non-finite values
# count as missing.
PSNR_CAP_DB = 100.0
METRIC_CAPS: dict[str, float] = {BG_PSNR: PSNR_CAP_DB, "true_bg_psnr": PSNR_CAP_DB}
