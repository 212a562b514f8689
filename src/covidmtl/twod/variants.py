"""The named variants of ``covidmtl twod-train`` and the model/criterion factories.

A variant fixes the architecture, the tasks, the class setting and the input size; numbers
(widths, learning rates, batch sizes, patience) come from the ``twod`` config section:
Amyar-family variants use ``twod.amyar`` (so does ``unet_seg_amyar``, the U-Net baseline of
Amyar Table 2, trained with Amyar's recipe: Adam 1e-4 constant, batch 4, patience 10),
segmenters of the MGA comparison ``twod.segmenter``, MGA-table classifiers ``twod.mga``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from covidmtl.twod.config import TwoDConfig

if TYPE_CHECKING:  # the networks import torch; Snakemake reads the variant registry without it
    from torch import nn


@dataclass(frozen=True)
class VariantSpec:
    name: str
    label: str
    family: str                    # amyar | segmenter | classifier (MGA tables)
    architecture: str              # amyar | cnn8 | unet | segnet | hmsa | resnet18 | resnet18_cbam | resnet50 | densenet121 | mga
    tasks: tuple[str, ...]         # subset of cls, seg, rec, mga
    task: str | None = None        # binary | 3class | None (segmenters) | "config" (twod.mga.task)
    large_input: bool = False      # Amyar 512 ablation
    mga_stage: int | str | None = None  # 1..3, "config" (twod.mga.attention_stage) or None
    description: str = ""

    @property
    def classifies(self) -> bool:
        return "cls" in self.tasks

    @property
    def segments(self) -> bool:
        return "seg" in self.tasks

    @property
    def segments_only(self) -> bool:
        """Lesion segmentation alone: trained and validated on slices with a lesion mask only."""
        return self.tasks == ("seg",)

    def resolved_task(self, cfg: TwoDConfig) -> str | None:
        return cfg.mga.task if self.task == "config" else self.task

    def resolved_stage(self, cfg: TwoDConfig) -> int | None:
        return cfg.mga.attention_stage if self.mga_stage == "config" else self.mga_stage

    def input_size(self, cfg: TwoDConfig) -> int:
        return cfg.amyar.large_input_size if self.large_input else cfg.input_size


AMYAR_TASK_SETS = {"mtl": ("cls", "seg", "rec"), "cls_seg": ("cls", "seg"), "cls_rec": ("cls", "rec"),
                   "cls": ("cls",)}
AMYAR_LABELS = {"mtl": "Amyar MTL (cls + seg + rec)", "cls_seg": "Amyar cls + seg", "cls_rec": "Amyar cls + rec",
                "cls": "Amyar cls only"}
TASK_WORDS = {"cls": "classification", "seg": "segmentation", "rec": "reconstruction"}
CLASS_WORDS = {"binary": "COVID vs non-COVID", "3class": "COVID / normal / CAP"}


def _registry() -> dict[str, VariantSpec]:
    v: dict[str, VariantSpec] = {}
    for task in ("binary", "3class"):
        for key, tasks in AMYAR_TASK_SETS.items():
            name = f"amyar_{key}_{task}"
            words = " + ".join(TASK_WORDS[t] for t in tasks)
            v[name] = VariantSpec(name, AMYAR_LABELS[key], "amyar", "amyar", tasks, task,
                                  description=f"Amyar encoder with {words}, {CLASS_WORDS[task]}, 256 input "
                                              f"(Amyar Tables 2-3)")
        v[f"amyar_mtl_{task}_512"] = VariantSpec(
            f"amyar_mtl_{task}_512", "Amyar MTL (cls + seg + rec), 512", "amyar", "amyar", AMYAR_TASK_SETS["mtl"], task,
            large_input=True, description=f"three-task Amyar model, {CLASS_WORDS[task]}, 512 input (Amyar Table 3)")
        v[f"cnn8_{task}"] = VariantSpec(
            f"cnn8_{task}", "8-layer CNN", "amyar", "cnn8", ("cls",), task,
            description=f"8-layer CNN baseline, {CLASS_WORDS[task]} (Amyar Experiment 3)")
    v["amyar_seg_rec"] = VariantSpec("amyar_seg_rec", "Amyar seg + rec", "amyar", "amyar", ("seg", "rec"), None,
                                     description="Amyar encoder with segmentation + reconstruction (Amyar Table 2)")
    v["unet_seg_amyar"] = VariantSpec("unet_seg_amyar", "U-Net", "amyar", "unet", ("seg",),
                                      description="U-Net lesion segmentation baseline with Amyar's recipe (Adam 1e-4 "
                                                  "constant, batch 4, patience 10; Amyar Table 2)")
    v["unet_seg"] = VariantSpec("unet_seg", "U-Net", "segmenter", "unet", ("seg",),
                                description="U-Net lesion segmentation baseline with the segmenter recipe "
                                            "(twod.segmenter; MGA Table 3)")
    v["segnet_seg"] = VariantSpec("segnet_seg", "SegNet", "segmenter", "segnet", ("seg",),
                                  description="SegNet lesion segmentation (MGA Table 3)")
    v["mga_seg_hmsa"] = VariantSpec("mga_seg_hmsa", "Multi-scale attention (MGA)", "segmenter", "hmsa", ("seg",),
                                    description="MGA lesion segmenter: hierarchical multi-scale attention "
                                                "(MGA Table 3; its model.pt feeds the mga* variants)")
    for arch, label in (("resnet18", "ResNet18"), ("resnet18_cbam", "ResNet18 + CBAM"), ("resnet50", "ResNet50"),
                        ("densenet121", "DenseNet121")):
        v[arch] = VariantSpec(arch, label, "classifier", arch, ("cls",), "config",
                              description=f"{label} classifier, twod.mga.task classes (MGA Table 4)")
    v["mga"] = VariantSpec("mga", "MGA", "classifier", "mga", ("cls", "mga"), "config", mga_stage="config",
                           description="ResNet18 + CBAM with the mask-guided attention module at stage "
                                       "twod.mga.attention_stage (MGA Table 4; needs --segmenter)")
    for stage in (1, 2, 3):
        v[f"mga_stage{stage}"] = VariantSpec(
            f"mga_stage{stage}", f"MGA at stage {stage}", "classifier", "mga", ("cls", "mga"), "config",
            mga_stage=stage, description=f"MGA module on the CBAM of residual stage {stage} (MGA Table 5)")
    return v


VARIANTS: dict[str, VariantSpec] = _registry()


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown twod variant {name!r}; choose from {sorted(VARIANTS)}") from None


def n_classes(spec: VariantSpec, cfg: TwoDConfig) -> int:
    task = spec.resolved_task(cfg)
    return {"binary": 2, "3class": 3}.get(task, 0)


def build_model(spec: VariantSpec, cfg: TwoDConfig) -> nn.Module:
    from covidmtl.twod.amyar import CNN8, AmyarNet
    from covidmtl.twod.classifiers import DenseNet121Classifier, ResNet2D
    from covidmtl.twod.segmenters import HMSASegmenter, SegNet, UNetSegmenter

    w, bn = cfg.width_multiplier, cfg.bn_momentum
    k = n_classes(spec, cfg)
    a, s, m = cfg.amyar, cfg.segmenter, cfg.mga
    arch = spec.architecture
    if arch == "amyar":
        return AmyarNet(spec.tasks, max(k, 2), 1, a.filters, w, a.cls_hidden, a.cls_dropout, bn)
    if arch == "cnn8":
        return CNN8(k, 1, a.cnn8_filters, a.cnn8_hidden, a.cls_dropout, w, bn)
    if arch == "unet":
        return UNetSegmenter(s.unet_features, w, bn)
    if arch == "segnet":
        return SegNet(s.segnet_filters, w, bn)
    if arch == "hmsa":
        return HMSASegmenter(s.trunk_features, s.attention_channels, s.train_scales, s.infer_scales, w, bn)
    if arch in {"resnet18", "resnet50"}:
        return ResNet2D(arch, k, 1, m.resnet_widths, w, bn_momentum=bn)
    if arch in {"resnet18_cbam", "mga"}:
        return ResNet2D("resnet18", k, 1, m.resnet_widths, w, cbam_stages=m.cbam_stages,
                        cbam_reduction=m.cbam_reduction, cbam_kernel=m.cbam_kernel,
                        guided_stage=spec.resolved_stage(cfg), bn_momentum=bn)
    if arch == "densenet121":
        return DenseNet121Classifier(k, m.densenet_init_features, m.densenet_growth_rate, w)
    raise ValueError(f"unknown architecture {arch}")


def build_criterion(spec: VariantSpec, cfg: TwoDConfig) -> nn.Module:
    from covidmtl.twod.losses import AmyarLoss, ClassificationLoss, MGALoss, SegmentationLoss

    with_bce = cfg.segmenter.loss == "dice_bce"
    if spec.architecture == "amyar":
        return AmyarLoss(spec.tasks, with_bce)
    if spec.architecture == "mga":
        return MGALoss()
    if spec.segments_only:
        return SegmentationLoss(with_bce)
    return ClassificationLoss()


def family_settings(spec: VariantSpec, cfg: TwoDConfig) -> dict:
    """lr, batch size, patience and scheduler of the variant's paper."""
    if spec.family == "amyar":
        return {"lr": cfg.amyar.lr, "batch_size": cfg.amyar.batch_size, "patience": cfg.amyar.patience,
                "scheduler": "constant"}
    section = cfg.segmenter if spec.family == "segmenter" else cfg.mga
    return {"lr": section.lr, "batch_size": section.batch_size, "patience": section.patience,
            "scheduler": section.scheduler}
