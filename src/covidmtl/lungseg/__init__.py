"""Unsupervised lung segmentation with active-contour refinement (COVID-MTL section 2.1,
Algorithm 1, Table 2, Figure 2).

Typical use::

    from covidmtl.lungseg import classical_segmentation, refine_with_active_contours
    initial = classical_segmentation(ct)                      # 1 right lung, 2 left lung
    refined = refine_with_active_contours(ct, initial, threads=4)
"""

from covidmtl.lungseg.classical import classical_segmentation, classical_segmentation_labels
from covidmtl.lungseg.crop import crop_masked_volume
from covidmtl.lungseg.metrics import segmentation_metrics
from covidmtl.lungseg.params import ClassicalParams, LungSegParams, OutputParams, RefineParams
from covidmtl.lungseg.refine import refine_with_active_contours

__all__ = [
    "ClassicalParams",
    "LungSegParams",
    "OutputParams",
    "RefineParams",
    "classical_segmentation",
    "classical_segmentation_labels",
    "crop_masked_volume",
    "refine_with_active_contours",
    "segmentation_metrics",
]
