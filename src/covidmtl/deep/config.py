"""The ``deep`` config section: every knob of the 3D deep models, with the paper's value as default.

Sources of the defaults: COVID-MTL (Bao et al., Pattern Recognition 2022; arXiv 2012.05509),
its method and experimental setup, and, where the paper gives no number, the authors' public code
(github.com/guoqingbao/COVID-MTL, marked "authors' code"). Demo/smoke configs override
sizes only (``width_multiplier``, ``input.input_size``, ``input.crop_size``, epochs).

The section arrives as JSON (``--params``); unknown keys are errors so that a typo
cannot silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from covidmtl import sectionconfig
from covidmtl.sectionconfig import SectionConfig


@dataclass
class InputConfig:
    input_size: tuple[int, int, int] | None = None
    """Resize every volume to (D, H, W) voxels before cropping (demo/smoke speed knob);
    None = no resize (paper: 1 mm lung volumes)."""
    crop_size: tuple[int, int, int] = (200, 250, 250)
    """Network input (D, H, W) cut from the volume: random crop in training, centre crop in
    test (authors' code: DEPTH=200, WIDTH=HEIGHT=250)."""
    pad_to_crop: bool = True
    """Pad volumes smaller than crop_size with the background value. The paper's inputs were
    masked CT volumes wider than its crop; the pipeline's lung volumes are cut to the lung's
    bounding box (often < 250 mm front to back at 1 mm), so padding restores the paper's input
    size. False = a volume smaller than the crop is a clear error naming the subject."""
    clip_hu: tuple[float, float] = (-1024.0, 2000.0)
    """Intensities are clipped to this HU range before normalisation (authors' code clips at
    2000; -1024 HU = air = the lung-segmentation background)."""
    intensity_mean_std: tuple[float, float] | None = None
    """(mean, sd) in HU for z-score normalisation; None = computed from the training volumes
    (mean of per-volume means and sds, as the authors' CTMEAN/CTSTD)."""
    cache_in_memory: bool = False
    """Keep loaded (and resized) volumes in memory across epochs (small demo sizes; effective with
    train.num_workers 0, since worker processes restart every epoch)."""


@dataclass
class AugmentConfig:
    enabled: bool = True
    """Random augmentation of training volumes (COVID-MTL preprocessing; test volumes are never augmented)."""
    rot90_prob: float = 6 / 21
    """Probability of an in-plane rotation by k*90 degrees, k random in 1..3 (authors' code:
    6 of 21 draws rotate)."""
    flip_prob: float = 3 / 21
    """Probability of a left-right flip (authors' code: 3 of 21 draws flip)."""
    noise_prob: float = 0.2
    """Probability of additive Gaussian noise (authors' code: p=0.2)."""
    noise_std_hu: float = 50.0
    """Noise sd in HU is drawn uniformly from [0, noise_std_hu] (authors' code: 10..50)."""


@dataclass
class Shift3DConfig:
    max_shift_fraction: float = 0.2
    """p of Algorithm 2: a shift moves by at most this fraction of the chosen dimension."""
    probability: float = 0.25
    """Chance that a training sample's feature maps are shifted at all (authors' code:
    shift_chance=0.25)."""
    pad: bool = False
    """Overwrite the wrapped-around elements with pad_value (Algorithm 2 option; off in the
    authors' code)."""
    pad_value: float = 0.0
    """Value written into wrapped-around elements when pad is true."""


@dataclass
class SqueezeNetConfig:
    squeeze_base: int = 32
    """Squeeze channels of the first Fire pair (x1, x2, x3, x4 for the four pairs); authors'
    code uses 32 (Koepueklue et al. v1.1: 16)."""
    stem_stride: tuple[int, int, int] = (2, 2, 2)
    """Stride of the first 3x3x3 convolution (authors' code: 2; Koepueklue v1.1 video: (1, 2, 2))."""
    dropout: float = 0.3
    """Dropout before the classifier / task layers (authors' code: 0.3)."""


@dataclass
class ResNetConfig:
    conv1_kernel: int = 5
    """Kernel of the first convolution of ResNet3D-34 (authors' code: 5)."""
    conv1_stride: int = 2
    """Stride of the first convolution (authors' code: 2)."""


@dataclass
class MTLConfig:
    task_channels: int = 32
    """Output channels of each task-specific layer (1x1x1 conv + global pooling); authors' code."""
    fnn_hidden: tuple[int, ...] = (256, 128, 64, 32)
    """Hidden layer sizes of the auxiliary feed-forward network on radiomics features
    (COVID-MTL auxiliary network); its last layer is concatenated with each task-specific layer."""


@dataclass
class FeaturesConfig:
    scaling: str = "standard"
    """'standard' = z-score with train-split statistics, 'minmax' = [0, 1] with train
    statistics (authors' code), 'none'."""


@dataclass
class LossConfig:
    type: str = "random_weighted"
    """'random_weighted' (COVID-MTL eq. 4-6), 'uncertainty' (Kendall et al. 2018) or 'mean';
    the variant name may fix it (loss ablation)."""
    n_draws: int = 2
    """n of eqs. 4-6: Dirichlet weight vectors drawn anew every iteration and averaged."""
    dirichlet_alpha: float = 1.0
    """Concentration alpha of the symmetric Dirichlet of eqs. 4-6 (1 = uniform on the simplex)."""


@dataclass
class TrainConfig:
    epochs: int = 80
    """Training epochs (COVID-MTL training setup)."""
    batch_size: int = 10
    """Mini-batch size (COVID-MTL training setup)."""
    lr_max: float = 0.005
    """Initial learning rate of the cosine schedule (COVID-MTL training setup)."""
    lr_min: float = 5e-5
    """Final learning rate of the cosine schedule (COVID-MTL training setup)."""
    momentum: float = 0.9
    """SGD momentum (COVID-MTL training setup)."""
    nesterov: bool = True
    """Nesterov momentum (COVID-MTL training setup)."""
    weight_decay: float = 5e-5
    """L2 weight decay (COVID-MTL training setup)."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process); on a GPU node set it to
    the CPU cores the job has less one, or the GPU waits for decompression and augmentation.
    The training rule requests num_workers + 1 threads."""
    grad_clip_norm: float | None = None
    """Clip the gradients' global L2 norm to this value (after unscaling under float16); None =
    no clipping (the paper does not clip)."""
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU); the authors trained in half precision."""
    amp_dtype: str = "bfloat16"
    """'bfloat16' or 'float16' (float16 adds a gradient scaler)."""
    channels_last: bool = True
    """channels_last_3d memory layout on CUDA (ignored on CPU)."""
    eval_every: int = 1
    """Evaluate the test split every this many epochs (curves of Figures 4, 9, 10); the last
    epoch is always evaluated."""
    progress: bool = True
    """Show a tqdm progress bar per epoch."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'."""


@dataclass
class TransferConfig:
    epochs: int = 50
    """Further epochs when the two-task model is repurposed for severity (COVID-MTL sections 5.4, 7)."""
    lr_max: float = 0.005
    """Initial learning rate of the transfer phase (cosine schedule as in training)."""
    lr_min: float = 5e-5
    """Final learning rate of the transfer phase."""
    freeze_batchnorm: bool = True
    """Keep batch-norm statistics of the frozen convolutional trunk fixed as well."""


@dataclass
class DeepConfig(SectionConfig):
    SECTION: ClassVar[str] = "deep"

    seed: int = 20201210
    """Seed of initialisation, sampling, augmentation, Shift3D and loss weights."""
    width_multiplier: float = 1.0
    """Scales every convolutional channel count (paper = 1.0; demo 0.25, smoke 0.125)."""
    bn_momentum: float = 0.01
    """Batch-norm running-statistics momentum (authors' code: 0.01; demo runs with few
    iterations need ~0.1 for usable eval statistics)."""
    input: InputConfig = field(default_factory=InputConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shift3d: Shift3DConfig = field(default_factory=Shift3DConfig)
    squeezenet: SqueezeNetConfig = field(default_factory=SqueezeNetConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)


    def validate(self) -> None:
        problems = []
        if self.width_multiplier <= 0:
            problems.append("width_multiplier must be > 0")
        if self.input.input_size is not None and any(
                c > s for c, s in zip(self.input.crop_size, self.input.input_size)):
            problems.append(f"input.crop_size {list(self.input.crop_size)} is larger than input.input_size "
                            f"{list(self.input.input_size)}")
        if self.augment.enabled and self.augment.rot90_prob > 0 and self.input.crop_size[1] != self.input.crop_size[2]:
            problems.append("augment.rot90_prob > 0 needs a square in-plane crop (crop_size[1] == crop_size[2])")
        if not 0 <= self.shift3d.max_shift_fraction < 1:
            problems.append("shift3d.max_shift_fraction must be in [0, 1)")
        if not 0 <= self.shift3d.probability <= 1:
            problems.append("shift3d.probability must be in [0, 1]")
        if self.loss.type not in {"random_weighted", "uncertainty", "mean"}:
            problems.append(f"loss.type {self.loss.type!r} is not one of random_weighted, uncertainty, mean")
        if self.loss.n_draws < 1 or self.loss.dirichlet_alpha <= 0:
            problems.append("loss.n_draws must be >= 1 and loss.dirichlet_alpha > 0")
        if self.features.scaling not in {"standard", "minmax", "none"}:
            problems.append("features.scaling must be standard, minmax or none")
        if self.train.amp_dtype not in {"bfloat16", "float16"}:
            problems.append("train.amp_dtype must be bfloat16 or float16")
        if self.train.device not in {"auto", "cpu", "cuda"}:
            problems.append("train.device must be auto, cpu or cuda")
        if self.train.epochs < 1 or self.transfer.epochs < 1 or self.train.batch_size < 1:
            problems.append("epochs and batch_size must be >= 1")
        if problems:
            raise ValueError("invalid deep config: " + "; ".join(problems))



def knob_table() -> list[dict[str, str]]:
    """Every knob as (dotted name, type, default, description), for the schema and the README."""
    return sectionconfig.knob_table(DeepConfig, "deep")

