"""The ``twod`` config section: every knob of the 2D models, with the paper's value as default.

Sources: Amyar, Modzelewski, Li and Ruan, "Multi-task deep learning based CT imaging
analysis for COVID-19 pneumonia: classification and segmentation", Comput Biol Med 126
(2020) 104037 ("Amyar"); Maftouni et al., "A mask-guided attention deep learning model for
COVID-19 diagnosis based on an integrated CT scan images database", IISE Trans Healthc Syst
Eng 13 (2023) 132-149 ("MGA"). Where a paper gives no number the default is marked
"(not stated; our choice)". Demo/smoke configs override sizes only (``width_multiplier``,
``input_size``, ``slices.*``, ``train.max_epochs``).

The section arrives as JSON (``--params``); unknown keys are errors (a typo cannot fall back
to a default silently). The parsing helpers are the 3D models' (:mod:`covidmtl.deep.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from covidmtl import sectionconfig
from covidmtl.sectionconfig import SectionConfig



@dataclass
class SlicesConfig:
    image_size: int = 512
    """Side of the stored square slices in pixels (``twod-slices``); networks resize them to
    ``twod.input_size`` (256) or ``twod.amyar.large_input_size`` (512), so 512 keeps the 512
    ablation of Amyar Table 3 faithful."""
    window_level_hu: float = -600.0
    """Centre of the lung window in HU (standard lung window; Amyar scales slices to [0, 1])."""
    window_width_hu: float = 1500.0
    """Width of the lung window in HU: [level - width/2, level + width/2] maps to [0, 1]."""
    per_subject: int = 0
    """Slices taken per subject, evenly spaced over the candidate slices; 0 = all candidates
    (the papers' 2D datasets are slice collections; not stated; our choice)."""
    min_lung_fraction: float = 0.05
    """A slice is a candidate when lung covers at least this fraction of it (lung mask of the
    curation stage, else a threshold estimate; not stated; our choice)."""
    positive_slices: str = "lesion"
    """'lesion': COVID-19/CAP slices are drawn from slices that show lesion (where a lesion
    mask exists), as in the papers' slice datasets, which hold slices with findings; 'lung':
    any lung slice."""
    lung_threshold_hu: float = -400.0
    """HU threshold of the fallback lung estimate (air below it, not connected to the image
    border) for subjects without a lung mask."""


@dataclass
class SplitConfig:
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Train/validation/test fractions of the patients, split patient-aware and stratified by
    class (both papers split by patient; proportions not stated; our choice)."""


@dataclass
class TrainConfig:
    max_epochs: int = 100
    """Upper limit of epochs; training stops earlier by early stopping (both papers; the limit
    is not stated; our choice)."""
    min_delta: float = 0.0
    """Early stopping: a validation loss must fall by more than this to count as improvement."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    cache_images: bool = True
    """Keep decoded slices (uint8) in memory across epochs."""
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    amp_dtype: str = "bfloat16"
    """'bfloat16' or 'float16' (float16 adds a gradient scaler)."""
    channels_last: bool = True
    """channels_last memory layout on CUDA (ignored on CPU)."""
    progress: bool = True
    """Show a tqdm progress bar per epoch."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'."""
    weight_decay: float = 0.0
    """L2 weight decay of Adam (not stated in either paper; 0)."""


@dataclass
class AmyarConfig:
    lr: float = 1e-4
    """Adam learning rate (Amyar, training details)."""
    batch_size: int = 4
    """Mini-batch size (Amyar, training details)."""
    patience: int = 10
    """Early stopping patience in epochs on the validation loss (Amyar, training details)."""
    filters: tuple[int, ...] = (64, 128, 256, 512, 1024)
    """Encoder filters per level (Amyar architecture: 3x3 convolutions, stride-2 convolutions
    instead of pooling, 64 to 1024 filters); scaled by twod.width_multiplier."""
    large_input_size: int = 512
    """Input side of the *_512 ablation variants (Amyar Table 3: 256 vs 512)."""
    cls_hidden: tuple[int, ...] = (128, 64)
    """Fully connected layers of the classification head after its convolution (Amyar:
    convolution + fully connected layers; sizes not stated; our choice)."""
    cls_dropout: float = 0.5
    """Dropout between the fully connected layers (not stated; our choice)."""
    cnn8_filters: tuple[int, ...] = (32, 32, 64, 64, 128, 128)
    """Convolutions of the 8-layer CNN baseline (Amyar Experiment 3: 6 convolutions + 2 fully
    connected layers; filter counts not stated; our choice); scaled by width_multiplier."""
    cnn8_hidden: int = 64
    """Units of the first fully connected layer of the 8-layer CNN (our choice)."""


@dataclass
class SegmenterConfig:
    lr: float = 1e-4
    """Adam learning rate of the segmenters (MGA lesion segmenter and the U-Net/SegNet
    comparison); the MGA classifier's setting (the segmenter's own recipe is not stated; our choice)."""
    batch_size: int = 8
    """Mini-batch size of the segmenters (not stated; our choice)."""
    patience: int = 10
    """Early stopping patience in epochs (as the MGA classifier; our choice for the segmenters)."""
    scheduler: str = "cosine"
    """'cosine' annealing over train.max_epochs or 'constant' (as the MGA classifier; our choice)."""
    loss: str = "dice"
    """'dice' (Amyar segmentation loss) or 'dice_bce' (Dice + binary cross-entropy)."""
    train_scales: tuple[float, ...] = (0.5, 1.0)
    """Scales of hierarchical multi-scale attention in training (MGA lesion segmenter,
    following Tao et al. 2020)."""
    infer_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Scales combined hierarchically at inference (MGA lesion segmenter, eq. 1)."""
    trunk_features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
    """Trunk of the multi-scale segmenter: MONAI BasicUNet features (the paper's trunk is
    HRNet-OCR, too heavy for CPU; our choice); scaled by width_multiplier."""
    attention_channels: int = 256
    """Channels of the attention head (two 3x3 conv-BN-ReLU, then 1x1 conv + sigmoid; Tao et al.)."""
    unet_features: tuple[int, ...] = (64, 128, 256, 512, 1024, 64)
    """U-Net baseline (MONAI BasicUNet) features: the classic U-Net widths (Ronneberger et al.;
    Amyar Table 2 and MGA Table 3 comparison)."""
    segnet_filters: tuple[int, ...] = (64, 128, 256, 512, 512)
    """SegNet encoder stage widths (VGG16 layout, Badrinarayanan et al.; MGA Table 3 comparison)."""


@dataclass
class MGAConfig:
    lr: float = 1e-4
    """Adam learning rate (MGA training setup)."""
    batch_size: int = 32
    """Mini-batch size (MGA training setup)."""
    patience: int = 10
    """Early stopping patience in epochs (MGA training setup)."""
    scheduler: str = "cosine"
    """'cosine' annealing over train.max_epochs (MGA training setup) or 'constant'."""
    task: str = "3class"
    """'3class' (COVID-19 / normal / CAP, the classes of MGA's integrated database) or 'binary'."""
    attention_stage: int = 2
    """Residual stage (1-3) whose CBAM spatial attention map the MGA module supervises for the
    `mga` variant (MGA Table 5 compares stages 1, 2, 3). The stage MGA uses is not stated in the
    text available here: 2 is our choice, not the paper's value (set it to the stage of the best
    row of MGA Table 5 when known). Table 5's row for this stage is the `mga` run."""
    cbam_stages: tuple[int, ...] = (1, 2, 3)
    """Residual stages of ResNet18 with CBAM in every block (MGA classifier)."""
    cbam_reduction: int = 16
    """Channel-attention MLP reduction ratio (CBAM, Woo et al. 2018)."""
    cbam_kernel: int = 7
    """Spatial-attention convolution kernel (CBAM, Woo et al. 2018)."""
    guide_source: str = "predicted"
    """Mask that supervises the attention map: 'predicted' by the lesion segmenter (MGA; needs
    --segmenter) or 'ground_truth' (slices without a mask then add no MGA loss)."""
    guide_threshold: float = 0.5
    """Probability threshold that turns the segmenter output into the lesion mask."""
    resnet_widths: tuple[int, ...] = (64, 128, 256, 512)
    """Stage widths of ResNet18/ResNet50 (He et al.); scaled by width_multiplier."""
    densenet_init_features: int = 64
    """DenseNet121 initial features (Huang et al.; MONAI DenseNet121); scaled by width_multiplier."""
    densenet_growth_rate: int = 32
    """DenseNet121 growth rate; scaled by width_multiplier."""
    size_sweep_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    """Training-set fractions of the single-task (ResNet18 + CBAM) vs MGA sweep (MGA section 6.3).
    The paper's fractions are not stated in the text available here: these are our choice, not
    the paper's values. Passed as twod-train --train-fraction by the workflow (the 1.0 point is
    the main run)."""


@dataclass
class AttributionConfig:
    n_slices: int = 4
    """Test slices (COVID-19, with a non-empty lesion mask) shown in the attribution figure (MGA Figure 10)."""
    ig_steps: int = 50
    """Integration steps of Integrated Gradients (Captum default)."""
    methods: tuple[str, ...] = ("integrated_gradients", "deeplift")
    """Attribution methods (MGA Figure 10: Integrated Gradients and DeepLIFT, via Captum)."""


@dataclass
class TwoDConfig(SectionConfig):
    SECTION: ClassVar[str] = "twod"

    seed: int = 20201210
    """Seed of initialisation, splits and sampling."""
    width_multiplier: float = 1.0
    """Scales every convolutional channel count (paper = 1.0; smoke 1/16)."""
    input_size: int = 256
    """Network input side in pixels (Amyar: 256 x 256; also used for the MGA models)."""
    bn_momentum: float = 0.1
    """Batch-norm running-statistics momentum (PyTorch default)."""
    slices: SlicesConfig = field(default_factory=SlicesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    amyar: AmyarConfig = field(default_factory=AmyarConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    mga: MGAConfig = field(default_factory=MGAConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)


    def validate(self) -> None:
        p = []
        if self.width_multiplier <= 0:
            p.append("width_multiplier must be > 0")
        if self.input_size < 16 or self.amyar.large_input_size < 16 or self.slices.image_size < 16:
            p.append("input_size, amyar.large_input_size and slices.image_size must be >= 16")
        if len(self.split.fractions) != 3 or any(f < 0 for f in self.split.fractions) or \
                abs(sum(self.split.fractions) - 1) > 1e-6 or self.split.fractions[0] <= 0 or \
                self.split.fractions[2] <= 0:
            p.append("split.fractions must be three non-negative numbers (train, validation, test) summing "
                     "to 1 with train > 0 and test > 0")
        if self.slices.positive_slices not in {"lesion", "lung"}:
            p.append("slices.positive_slices must be 'lesion' or 'lung'")
        if self.slices.window_width_hu <= 0:
            p.append("slices.window_width_hu must be > 0")
        if self.slices.per_subject < 0:
            p.append("slices.per_subject must be >= 0")
        if self.segmenter.scheduler not in {"cosine", "constant"} or self.mga.scheduler not in {"cosine", "constant"}:
            p.append("scheduler must be 'cosine' or 'constant'")
        if self.segmenter.loss not in {"dice", "dice_bce"}:
            p.append("segmenter.loss must be 'dice' or 'dice_bce'")
        if 1.0 not in self.segmenter.train_scales or 1.0 not in self.segmenter.infer_scales:
            p.append("segmenter.train_scales and infer_scales must contain 1.0")
        if len(self.segmenter.trunk_features) != 6 or len(self.segmenter.unet_features) != 6:
            p.append("segmenter.trunk_features and unet_features need 6 numbers (MONAI BasicUNet)")
        if self.mga.task not in {"binary", "3class"}:
            p.append("mga.task must be 'binary' or '3class'")
        if self.mga.attention_stage not in {1, 2, 3} or not set(self.mga.cbam_stages) <= {1, 2, 3, 4}:
            p.append("mga.attention_stage must be 1, 2 or 3 and mga.cbam_stages a subset of 1..4")
        if self.mga.guide_source not in {"predicted", "ground_truth"}:
            p.append("mga.guide_source must be 'predicted' or 'ground_truth'")
        if len(self.mga.resnet_widths) != 4:
            p.append("mga.resnet_widths needs 4 numbers")
        if not set(self.attribution.methods) <= {"integrated_gradients", "deeplift"}:
            p.append("attribution.methods: choose from integrated_gradients, deeplift")
        if self.train.amp_dtype not in {"bfloat16", "float16"}:
            p.append("train.amp_dtype must be bfloat16 or float16")
        if self.train.device not in {"auto", "cpu", "cuda"}:
            p.append("train.device must be auto, cpu or cuda")
        if self.train.max_epochs < 1 or min(self.amyar.batch_size, self.mga.batch_size,
                                            self.segmenter.batch_size) < 1:
            p.append("train.max_epochs and batch sizes must be >= 1")
        if min(self.amyar.patience, self.mga.patience, self.segmenter.patience) < 1:
            p.append("patience must be >= 1")
        if p:
            raise ValueError("invalid twod config: " + "; ".join(p))


def scaled(channels: int, width: float, minimum: int = 1) -> int:
    """Channel count at a width multiplier (at least ``minimum``)."""
    return max(minimum, int(round(channels * width)))


def knob_table() -> list[dict[str, str]]:
    """Every knob as (dotted name, type, default, description), for the schema and the README."""
    return sectionconfig.knob_table(TwoDConfig, "twod")

def add_config_arguments(ap) -> None:
    """--params/--seed of the 2D commands that read the ``twod`` section (see :func:`config_from_args`)."""
    ap.add_argument("--params", default="{}", help="JSON of the `twod` config section")
    ap.add_argument("--seed", type=int, default=None, help="overrides twod.seed")


def config_from_args(args) -> TwoDConfig:
    cfg = TwoDConfig.from_json(args.params)
    if args.seed is not None:
        cfg.seed = args.seed
    return cfg
