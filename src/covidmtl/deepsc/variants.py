"""Named DeepSC-COVID experiments of ``covidmtl deepsc-train`` and the model factory.

One training command serves every variant: the full model, the ablations of section V
(single-task, without the inception block, without the cross-stitch unit, lambda_ta of
Figure 9, single- vs multi-scale task-aware loss of Table III) and the Table II baselines.
Sizes, epochs and learning rates come from the ``deepsc`` config section; a variant fixes
only what it ablates.

Training stages (section V-A): joint variants pre-train the segmentation part
(``pretrain_seg``) and the classification part (``pretrain_cls``) separately with
``train.pretrain_lr``, then fine-tune everything with the total loss (``finetune``,
``train.finetune_lr``). Single-task variants and baselines train their one task for the
same number of epochs with the same two learning rates (pre-train, then continue at the
fine-tuning rate), so that every variant gets the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from covidmtl.deepsc.config import DeepSCConfig

if TYPE_CHECKING:  # the networks import torch; Snakemake reads the variant registry without it
    from torch import nn


@dataclass(frozen=True)
class VariantSpec:
    name: str
    label: str
    architecture: str                 # deepsc | resnet50 | unet3d
    tasks: tuple[str, ...]            # subset of ("seg", "cls")
    inception: bool = True
    cross_stitch: bool = True
    lambda_ta: float | None = None    # None = deepsc.loss.lambda_ta
    task_aware_scales: str | None = None  # None = deepsc.loss.task_aware_scales
    finetune: bool = True             # False: the pre-training stages only (``pretrain``)
    description: str = ""

    @property
    def joint(self) -> bool:
        return len(self.tasks) == 2

    def effective_lambda_ta(self, cfg: DeepSCConfig) -> float | None:
        """lambda_ta of the fine-tuning (None: no joint fine-tuning, no task-aware loss)."""
        if not (self.joint and self.finetune):
            return None
        return cfg.loss.lambda_ta if self.lambda_ta is None else self.lambda_ta

    def effective_scales(self, cfg: DeepSCConfig) -> str | None:
        return (self.task_aware_scales or cfg.loss.task_aware_scales) if self.joint and self.finetune else None


@dataclass(frozen=True)
class Phase:
    name: str      # pretrain_seg | pretrain_cls | finetune
    mode: str      # seg | cls | joint
    epochs: int
    lr: float
    covers: str    # parameter group the phase trains ('seg', 'cls' or 'all')


def _registry() -> dict[str, VariantSpec]:
    both = ("seg", "cls")
    v = [
        VariantSpec("deepsc", "DeepSC-COVID", "deepsc", both,
                    description="full model: inception blocks, cross-stitch, task-aware loss (config lambda_ta, scales)"),
        VariantSpec("pretrain", "DeepSC-COVID, pre-trained only", "deepsc", both, finetune=False,
                    description="the two pre-training stages only; its model.pt can start the joint variants "
                                "(--init-from) so that they share one pre-training"),
        VariantSpec("seg_only", "Single-task segmentation", "deepsc", ("seg",),
                    description="lesion branch alone (inception block + 3D lesion subnet), Dice + focal loss"),
        VariantSpec("cls_only", "Single-task classification", "deepsc", ("cls",),
                    description="classification branch alone (inception block + classification subnet)"),
        VariantSpec("no_inception", "w/o inception block", "deepsc", both, inception=False,
                    description="plain 3D convolutions instead of the 3D inception blocks"),
        VariantSpec("no_cross_stitch", "w/o cross-stitch unit", "deepsc", both, cross_stitch=False,
                    description="no feature exchange between the branches (identity mixing, fixed)"),
        VariantSpec("single_scale_ta", "Single-scale task-aware loss", "deepsc", both, task_aware_scales="single",
                    description="task-aware loss on the finest intermediate segmentation / evidence pair only (Table III)"),
        VariantSpec("multi_scale_ta", "Multi-scale task-aware loss", "deepsc", both, task_aware_scales="multi",
                    description="task-aware loss on all three pairs (Table III; = deepsc when the config says multi)"),
    ]
    for lam in (0, 1, 10, 100):
        v.append(VariantSpec(f"lambda_ta_{lam}", f"lambda_ta = {lam}", "deepsc", both, lambda_ta=float(lam),
                             description=f"full model with task-aware weight lambda_ta = {lam} (Figure 9)"))
    v += [
        VariantSpec("resnet50_cls", "3D ResNet-50", "resnet50", ("cls",),
                    description="Table II classification baseline: MONAI 3D ResNet-50 on the N-slice input"),
        VariantSpec("unet3d_seg", "3D U-Net", "unet3d", ("seg",),
                    description="Table II segmentation baseline: MONAI plain 3D U-Net on the patches"),
    ]
    return {s.name: s for s in v}


VARIANTS: dict[str, VariantSpec] = _registry()


def get_variant(name: str) -> VariantSpec:
    if name not in VARIANTS:
        raise KeyError(f"unknown deepsc variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def same_as_full_model(cfg: DeepSCConfig | dict) -> list[str]:
    """Variants that under ``cfg`` train exactly the full model ``deepsc`` (same architecture,
    tasks, stages, lambda_ta and task-aware scales), e.g. ``lambda_ta_10`` and
    ``multi_scale_ta`` when ``deepsc.loss`` says lambda_ta = 10, scales = multi. The workflow
    does not train them; the report takes their rows and points from ``deepsc``.
    ``cfg`` may be the ``deepsc`` config section as a dict (the Snakefile's view)."""
    if not isinstance(cfg, DeepSCConfig):
        cfg = DeepSCConfig.from_dict(cfg)
    full = VARIANTS["deepsc"]

    def setting(spec: VariantSpec) -> tuple:
        return (spec.architecture, spec.tasks, spec.inception, spec.cross_stitch, spec.finetune,
                spec.effective_lambda_ta(cfg), spec.effective_scales(cfg))

    return [name for name, spec in VARIANTS.items() if name != full.name and setting(spec) == setting(full)]


def build_model(spec: VariantSpec, cfg: DeepSCConfig) -> nn.Module:
    from covidmtl.deepsc.networks import DeepSC, ResNet50Classifier, UNet3DSegmenter

    if spec.architecture == "resnet50":
        return ResNet50Classifier(cfg)
    if spec.architecture == "unet3d":
        return UNet3DSegmenter(cfg)
    return DeepSC(cfg, spec.tasks, inception=spec.inception, cross_stitch=spec.cross_stitch)


def phases(spec: VariantSpec, cfg: DeepSCConfig, pretrained: frozenset[str] = frozenset()) -> list[Phase]:
    """The training stages; ``pretrained`` names parameter groups loaded by --init-from,
    whose pre-training stage is skipped."""
    t = cfg.train
    out = []
    if "seg" in spec.tasks and "seg" not in pretrained:
        out.append(Phase("pretrain_seg", "seg", t.pretrain_seg_epochs, t.pretrain_lr, "seg"))
    if "cls" in spec.tasks and "cls" not in pretrained:
        out.append(Phase("pretrain_cls", "cls", t.pretrain_cls_epochs, t.pretrain_lr, "cls"))
    if spec.finetune:
        mode = "joint" if spec.joint else spec.tasks[0]
        out.append(Phase("finetune", mode, t.finetune_epochs, t.finetune_lr, "all"))
    return [p for p in out if p.epochs > 0]


def inference_mode(spec: VariantSpec) -> str:
    """'joint' (cross-stitch active), 'seg'/'cls' (single task), or 'separate' (both tasks, each
    through its own branch: a model that was only pre-trained)."""
    if not spec.joint:
        return spec.tasks[0]
    return "joint" if spec.finetune else "separate"


def data_mode(spec: VariantSpec) -> str:
    """Which inputs the per-epoch evaluation items carry."""
    return "joint" if spec.joint else spec.tasks[0]
