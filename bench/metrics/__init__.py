"""Metrics: per-sample (stored in each row) and set-level (computed when tables are built).

Metric names are constants; the tables know each metric's direction from here.
"""

PIXEL_MAD = "pixel_mad"
FID64_PAIR = "fid64_pair"  # the paper's per-pair "FID" (docs/paper.md §4.3)
CLIP_SCORE = "clip_score"  # 100 * max(cos, 0), open_clip
BG_PSNR = "bg_psnr"  # background preservation outside the subject mask (PIE-Bench style)
BG_SSIM = "bg_ssim"
# Toy world only (metrics=toy, bench/toy/metrics.py): the truth is known there.
MASK_IOU = "mask_iou"  # the method's subject mask vs the true subject region
MASK_IOU_RANDOM = "mask_iou_random"  # a random mask of the same area (chance level)
MASK_IOU_CENTRE = "mask_iou_centre"  # the same number of cells nearest the centre (a data-free prior)
SUBJECT_OK = "subject_ok"  # toy CLIP: prompted colour and shape
SUBJECT_OK_ORACLE = "subject_ok_oracle"  # oracle segmenter: prompted colour and shape
TRUE_BG_PSNR = "true_bg_psnr"  # background kept, outside the true subject region
# Subject truth (truth_record, bench/truth/record.py): how stable the truth itself is.
TRUTH_IOU_ALT = "truth_iou_alt"  # the truth mask at its threshold vs at truth_record.alt_threshold
TRUTH_IOU_COMPARE = "truth_iou_compare"  # the truth vs a second source (truth@truth_compare=...)
TRUTH_MASK_IOU = "truth_mask_iou"  # the method's subject mask vs the truth
TRUTH_MASK_IOU_RANDOM = "truth_mask_iou_random"  # a random mask of the same latent cells (chance level)
TRUTH_BG_PSNR = "truth_bg_psnr"  # background kept, outside the truth
# The attribution study's headline, when a run writes it into its rows (tables aggregate it; higher is better).
ATTR_AUROC = "attr_auroc"
# Set-level metrics (bench.metrics.set_level, computed by bench.aggregate): name -> True if higher is better.
FID2048 = "fid2048"
KID_MEAN = "kid_mean"
SET_LEVEL_METRICS: dict[str, bool] = {FID2048: False, KID_MEAN: False}

# name -> True if higher is better. Columns of samples.csv that tables aggregate, in table order. The truth
# metrics are NaN for an empty truth (reason in truth_nan_reason), so the tables count those samples apart.
PER_SAMPLE_METRICS: dict[str, bool] = {
    PIXEL_MAD: False,
    FID64_PAIR: False,
    CLIP_SCORE: True,
    BG_PSNR: True,
    BG_SSIM: True,
    MASK_IOU: True,
    MASK_IOU_RANDOM: True,
    MASK_IOU_CENTRE: True,
    SUBJECT_OK: True,
    SUBJECT_OK_ORACLE: True,
    TRUE_BG_PSNR: True,
    TRUTH_IOU_ALT: True,
    TRUTH_IOU_COMPARE: True,
    TRUTH_MASK_IOU: True,
    TRUTH_MASK_IOU_RANDOM: True,
    TRUTH_BG_PSNR: True,
}

# Caps applied when tables aggregate (bench.reporting.tables.metric_values, the one place): a PSNR of identical
# pixels is inf in samples.csv; tables count it as PSNR_CAP_DB so a mean stays finite. Other non-finite values
# count as missing.
PSNR_CAP_DB = 100.0
METRIC_CAPS: dict[str, float] = {BG_PSNR: PSNR_CAP_DB, TRUE_BG_PSNR: PSNR_CAP_DB}
