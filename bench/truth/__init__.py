"""Subject truth: where the prompt's subject is in an image, from a segmenter with stated provenance.

One interface, several sources: the toy world's oracle (bench/toy/truth.py) and, for real images, a
text-prompted segmentation model (bench/truth/clipseg.py). The attribution study and the mask metrics
take a `SubjectTruth` and do not care where it came from. bench/truth/record.py records it per sample in a
run (`truth_record`) and pairs a row with its no_manipulation control.
"""

from bench.truth.base import SubjectSegmenter, SubjectTruth, latent_truth, threshold_truth

__all__ = ["SubjectSegmenter", "SubjectTruth", "latent_truth", "threshold_truth"]
