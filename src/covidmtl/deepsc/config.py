"""The ``deepsc`` config section: every knob of DeepSC-COVID, with the paper's value as default.

Source: Wang et al., "Joint Learning of 3D Lesion Segmentation and Classification for
Explainable COVID-19 Diagnosis" (DeepSC-COVID), IEEE TMI 40(9):2463-2476, 2021. Section
numbers refer to that paper. Where the paper (as available to us) gives no number, the
default is our choice and its description says "not stated"; those defaults must not be
read as the paper's. Demo/smoke configs override sizes only (``width_multiplier``,
patch size, number of slices, epochs).

The section arrives as JSON (``--params``); unknown keys are errors, so that a typo cannot
silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from covidmtl import sectionconfig
from covidmtl.sectionconfig import SectionConfig

# Generic dataclass-from-dict builder and attribute-docstring reader of the shared deep config.


@dataclass
class PreprocessConfig:
    hu_window: tuple[float, float] = (-1400.0, 200.0)
    """CT is truncated to this HU range and scaled linearly to [0, 1] (section V-A)."""
    mask_with_lung: bool = True
    """Multiply the scaled CT by the lung mask (section V-A; the pipeline's own refined lung mask)."""
    crop_to_lung: bool = False
    """Cut the volume to the lung bounding box (plus crop_margin_mm) before patching; outside
    it the masked CT is 0 anyway, so only speed changes (pipeline option, not in the paper)."""
    crop_margin_mm: float = 4.0
    """Margin around the lung bounding box when crop_to_lung is on (pipeline option)."""
    cache_in_memory: bool = False
    """Keep preprocessed volumes in memory across epochs (demo/smoke sizes; with num_workers 0)."""


@dataclass
class SegmentationConfig:
    patch_size: tuple[int, int, int] = (24, 256, 256)
    """(D, H, W) of the 3D patches of the lesion subnet. Inference tiles the volume with
    non-overlapping patches and stitches the predictions back (section V-A); training draws
    random patches instead (train_patches_per_subject, positive_fraction). Each must be
    divisible by 8 (three down-transitions)."""
    train_patches_per_subject: int = 4
    """Random training patches drawn per subject and epoch. Deliberate deviation from the
    paper, which describes non-overlapping patches only (section V-A, i.e. tiles for training
    too); random patches, a share centred on lesions, see the scarce lesion voxels more often
    at the same cost per epoch."""
    positive_fraction: float = 0.5
    """Share of training patches centred on a lesion voxel (subjects with lesions); the rest
    are uniform over the volume (not stated in the paper)."""
    threshold: float = 0.5
    """Lesion probability at which a voxel counts as lesion (not stated; the usual 0.5)."""


@dataclass
class ClassificationConfig:
    n_slices: int = 48
    """N equidistant axial slices form the classification input (section V-A, eq. 12):
    slice n of S is floor((n + 1/2) S / N), n = 0..N-1."""
    slice_size: tuple[int, int] = (256, 256)
    """In-plane size (H, W) the N slices are resized to (antialiased bilinear; not stated
    beyond the 256 x 256 patch size of section V-A)."""


@dataclass
class ModelConfig:
    inception_channels: int = 32
    """Output channels of each 3D inception block (four branches of out/4 channels; section
    IV-A; the count is not stated)."""
    unet_channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    """Channels of the lesion subnet's U-shape at full, 1/2, 1/4, 1/8 resolution (three down-
    and three up-transitions, section IV-B; counts not stated)."""
    cls_channels: tuple[int, int, int] = (64, 128, 256)
    """Channels of the three units of the classification encoder (section IV-C)."""
    cross_stitch_init: tuple[float, float] = (0.9, 0.1)
    """Initial (same-task, other-task) weights of the 2x2 cross-stitch matrix (section IV-A;
    values from Misra et al. 2016, not stated in DeepSC-COVID)."""
    eta_init: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    """eta_1..eta_4 of eq. 3 for the intermediate segmentations at 1/8, 1/4, 1/2, 1 resolution
    (initial values when learn_eta; not stated in the paper)."""
    learn_eta: bool = True
    """Learn eta_1..eta_4 with the network (eq. 3) instead of keeping eta_init."""
    norm_groups: int = 8
    """Groups of the group normalisation (section IV-A uses GN; the count is not stated)."""
    dropout: float = 0.0
    """Dropout before the fully connected layer of eq. 4 (not stated; 0 = none)."""


@dataclass
class LossConfig:
    dice_weight: float = 1.0
    """Weight of the Dice loss in the segmentation loss (eqs. 6, 8)."""
    focal_weight: float = 1.0
    """Weight of the focal loss in the segmentation loss (eqs. 7, 8)."""
    focal_gamma: float = 2.0
    """Focusing parameter gamma of the focal loss (eq. 7; value of Lin et al., not stated)."""
    focal_alpha: float | None = None
    """Balance alpha of the focal loss (eq. 7); null = none."""
    class_weights: Any = "inverse_frequency"
    """Class weights of the weighted cross-entropy (eq. 9): "inverse_frequency" (from the train
    split), "none", or a list of 3 weights (covid19, cap, normal)."""
    lambda_seg: float = 1.0
    """Weight of the segmentation loss in the total loss (eq. 11)."""
    lambda_cls: float = 1.0
    """Weight of the classification loss in the total loss (eq. 11)."""
    lambda_ta: float = 10.0
    """Weight lambda_ta of the task-aware loss in the total loss (eq. 11; Figure 9 varies it
    over 0, 1, 10, 100; the default 10 is not verified against the paper)."""
    task_aware_scales: str = "multi"
    """"multi": task-aware loss between all three intermediate segmentations and evidence masks
    V_1..V_3; "single": finest pair only (Table III)."""


@dataclass
class TrainConfig:
    pretrain_seg_epochs: int = 100
    """Stage 1: epochs pre-training the lesion branch (section V-A two-stage training; count not stated)."""
    pretrain_cls_epochs: int = 100
    """Stage 1: epochs pre-training the classification branch (count not stated)."""
    finetune_epochs: int = 50
    """Stage 2: epochs fine-tuning everything with the total loss (count not stated)."""
    pretrain_lr: float = 1e-3
    """Adam learning rate of the pre-training stage, decayed linearly (section V-A)."""
    finetune_lr: float = 1e-4
    """Adam learning rate of the fine-tuning stage, decayed linearly (section V-A)."""
    lr_end_factor: float = 0.0
    """Linear decay ends at lr x this factor after the stage's last epoch (0 = to zero)."""
    weight_decay: float = 0.0
    """Adam weight decay (not stated; 0)."""
    batch_size: int = 2
    """Subjects per mini-batch (not stated)."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    amp_dtype: str = "bfloat16"
    """'bfloat16' or 'float16' (float16 adds a gradient scaler)."""
    channels_last: bool = True
    """channels_last_3d memory layout on CUDA (ignored on CPU)."""
    eval_every: int = 1
    """Evaluate on the test split (classification + fixed test patches) every this many epochs,
    for the curves only; the last epoch is always evaluated (no model selection)."""
    progress: bool = True
    """Show a tqdm progress bar per epoch."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""


@dataclass
class EvaluationConfig:
    nsd_tolerance_mm: float = 1.0
    """Tolerance (mm) of the normalised surface Dice (not stated in the paper)."""
    timing_repeats: int = 1
    """Timed inference passes per test scan (after one untimed warm-up scan)."""


@dataclass
class FindingsConfig:
    min_lesion_volume_mm3: float = 100.0
    """Connected lesion components smaller than this (0.1 ml, a 5.8 mm sphere) are ignored as
    annotation specks (section III statistics; threshold not stated in the paper)."""
    connectivity: int = 26
    """Voxel connectivity of a lesion component: 6, 18 or 26."""
    peripheral_fraction: float = 1 / 3
    """A lesion is peripheral when its centroid lies in the outer fraction of the lung:
    distance to the lung boundary / largest inner distance of that lung < this (section III,
    finding 4; radiological outer third)."""
    hu_bins: tuple[float, float, float] = (-1000.0, 200.0, 50.0)
    """(start, stop, width) of the HU histogram of lesion voxels (section III, Figure 1)."""


@dataclass
class DeepSCConfig(SectionConfig):
    SECTION: ClassVar[str] = "deepsc"

    seed: int = 20210513
    """Seed of initialisation, patch sampling and batching (the workflow passes its global seed)."""
    width_multiplier: float = 1.0
    """Scales every channel count (paper = 1.0; demo and smoke 0.125)."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    findings: FindingsConfig = field(default_factory=FindingsConfig)


    def validate(self) -> None:
        p = []
        lo, hi = self.preprocess.hu_window
        if not lo < hi:
            p.append("preprocess.hu_window must be (low, high) with low < high")
        if self.width_multiplier <= 0:
            p.append("width_multiplier must be > 0")
        ps = self.segmentation.patch_size
        if len(ps) != 3 or any(int(s) < 8 or int(s) % 8 for s in ps):
            p.append(f"segmentation.patch_size {list(ps)} must be 3 sizes, each a multiple of 8 (three "
                     f"down-transitions halve it three times)")
        if self.segmentation.train_patches_per_subject < 1:
            p.append("segmentation.train_patches_per_subject must be >= 1")
        if not 0 <= self.segmentation.positive_fraction <= 1:
            p.append("segmentation.positive_fraction must be in [0, 1]")
        if not 0 < self.segmentation.threshold < 1:
            p.append("segmentation.threshold must be in (0, 1)")
        if self.classification.n_slices < 8:
            p.append("classification.n_slices must be >= 8 (the encoder halves the depth three times)")
        if len(self.classification.slice_size) != 2 or min(self.classification.slice_size) < 8:
            p.append("classification.slice_size must be (H, W), each >= 8")
        m = self.model
        if len(m.unet_channels) != 4 or len(m.cls_channels) != 3 or len(m.eta_init) != 4:
            p.append("model.unet_channels needs 4, model.cls_channels 3, model.eta_init 4 values")
        if len(m.cross_stitch_init) != 2:
            p.append("model.cross_stitch_init needs (same-task, other-task)")
        if m.inception_channels < 4 or m.norm_groups < 1:
            p.append("model.inception_channels must be >= 4 and model.norm_groups >= 1")
        lw = self.loss
        cw = lw.class_weights
        if not (cw in ("inverse_frequency", "none") or (isinstance(cw, (list, tuple)) and len(cw) == 3
                                                        and all(float(w) > 0 for w in cw))):
            p.append("loss.class_weights must be 'inverse_frequency', 'none' or 3 positive weights")
        if lw.task_aware_scales not in {"multi", "single"}:
            p.append("loss.task_aware_scales must be 'multi' or 'single'")
        if min(lw.lambda_seg, lw.lambda_cls, lw.lambda_ta, lw.dice_weight, lw.focal_weight) < 0:
            p.append("loss weights must be >= 0")
        t = self.train
        if min(t.pretrain_seg_epochs, t.pretrain_cls_epochs, t.finetune_epochs) < 0 or t.batch_size < 1:
            p.append("epochs must be >= 0 and train.batch_size >= 1")
        if not 0 <= t.lr_end_factor <= 1:
            p.append("train.lr_end_factor must be in [0, 1]")
        if t.amp_dtype not in {"bfloat16", "float16"}:
            p.append("train.amp_dtype must be bfloat16 or float16")
        if t.device not in {"auto", "cpu", "cuda"}:
            p.append("train.device must be auto, cpu or cuda")
        if self.evaluation.nsd_tolerance_mm <= 0:
            p.append("evaluation.nsd_tolerance_mm must be > 0")
        f = self.findings
        if f.connectivity not in {6, 18, 26}:
            p.append("findings.connectivity must be 6, 18 or 26")
        if not 0 < f.peripheral_fraction < 1:
            p.append("findings.peripheral_fraction must be in (0, 1)")
        if len(f.hu_bins) != 3 or f.hu_bins[2] <= 0 or f.hu_bins[1] <= f.hu_bins[0]:
            p.append("findings.hu_bins must be (start, stop, width) with stop > start and width > 0")
        if p:
            raise ValueError("invalid deepsc config: " + "; ".join(p))


def knob_table() -> list[dict[str, str]]:
    """Every knob as (dotted name, type, default, description), for the schema and the README."""
    return sectionconfig.knob_table(DeepSCConfig, "deepsc")