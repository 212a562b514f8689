"""The named experiment variants of ``covidmtl deep-train`` and the model factory.

One training command serves every variant; the variant fixes the architecture, the
tasks, Shift3D on/off, radiomics features on/off, the loss (ablation variants) and
whether the run starts from a two-task model (transfer learning). Numbers (sizes,
epochs, learning rates, ...) come from the ``deep`` config section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from covidmtl.deep.config import DeepConfig

if TYPE_CHECKING:  # the networks import torch; Snakemake reads the variant registry without it
    from torch import nn

    from covidmtl.deep.mtl import CovidMTL
    from covidmtl.deep.shift3d import Shift3D

TASK_CLASSES = {"ct": 2, "nat": 2, "severity": 3}
TASK_NAMES = {"ct": "CT", "nat": "NAT", "severity": "severity"}


@dataclass(frozen=True)
class VariantSpec:
    name: str
    label: str
    architecture: str              # resnet3d | squeezenet3d | shiftnet3d | covid_mtl
    tasks: tuple[str, ...]
    shift3d: bool
    features: bool = False
    loss: str | None = None        # None = deep.loss.type
    transfer_from: tuple[str, ...] | None = None  # tasks of the model given by --init-from
    description: str = ""

    @property
    def task_classes(self) -> dict[str, int]:
        return {t: TASK_CLASSES[t] for t in self.tasks}

    @property
    def is_transfer(self) -> bool:
        return self.transfer_from is not None


def _registry() -> dict[str, VariantSpec]:
    v: dict[str, VariantSpec] = {}
    for task in TASK_CLASSES:
        v[f"resnet3d_{task}"] = VariantSpec(
            f"resnet3d_{task}", f"ResNet3D-34 ({TASK_NAMES[task]})", "resnet3d", (task,), False,
            description=f"single-task ResNet3D-34 baseline for {task} (Table 3/4)")
        v[f"squeezenet3d_{task}"] = VariantSpec(
            f"squeezenet3d_{task}", f"SqueezeNet3D ({TASK_NAMES[task]})", "squeezenet3d", (task,), False,
            description=f"single-task SqueezeNet3D baseline for {task} (Table 3/4)")
        v[f"shiftnet3d_{task}"] = VariantSpec(
            f"shiftnet3d_{task}", f"ShiftNet3D ({TASK_NAMES[task]})", "shiftnet3d", (task,), True,
            description=f"single-task ShiftNet3D (SqueezeNet3D + Shift3D) for {task} (Table 3/4)")
    three = ("ct", "nat", "severity")
    v["mtl_noshift"] = VariantSpec(
        "mtl_noshift", "COVID-MTL w/o Shift3D", "covid_mtl", three, False,
        description="COVID-MTL, three tasks, SqueezeNet3D trunk (no Shift3D), loss deep.loss.type")
    v["mtl_shift"] = VariantSpec(
        "mtl_shift", "COVID-MTL + Shift3D", "covid_mtl", three, True,
        description="COVID-MTL, three tasks, ShiftNet3D trunk, loss deep.loss.type")
    v["mtl_shift_features"] = VariantSpec(
        "mtl_shift_features", "COVID-MTL + Shift3D + features", "covid_mtl", three, True, features=True,
        description="full COVID-MTL: ShiftNet3D trunk + radiomics FNN, three tasks")
    loss_labels = {"uncertainty": "uncertainty loss", "mean": "mean loss"}
    for loss, loss_label in loss_labels.items():
        for shift in (False, True):
            name = f"mtl_{'shift' if shift else 'noshift'}_{loss}"
            v[name] = VariantSpec(
                name, f"COVID-MTL {'+' if shift else 'w/o'} Shift3D, {loss_label}", "covid_mtl", three, shift,
                loss=loss, description=f"loss ablation (Fig. 9): {loss} loss, "
                                       f"Shift3D {'on' if shift else 'off'}")
    for shift in (False, True):
        tag = "shift" if shift else "noshift"
        v[f"mtl2_{tag}"] = VariantSpec(
            f"mtl2_{tag}", f"COVID-MTL 2-task {'+' if shift else 'w/o'} Shift3D", "covid_mtl", ("ct", "nat"), shift,
            description="two diagnosis tasks (CT, NAT); source model of transfer learning (section 5.4)")
        v[f"transfer_severity_{tag}"] = VariantSpec(
            f"transfer_severity_{tag}", f"COVID-MTL transfer to severity {'+' if shift else 'w/o'} Shift3D",
            "covid_mtl", ("severity",), shift, transfer_from=("ct", "nat"),
            description="two-task model repurposed for severity: task layers replaced, trunk frozen, "
                        "deep.transfer.epochs more epochs (section 5.4, Fig. 10); needs --init-from")
    return v


VARIANTS: dict[str, VariantSpec] = _registry()


def get_variant(name: str) -> VariantSpec:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


def loss_type(spec: VariantSpec, cfg: DeepConfig) -> str:
    return spec.loss or cfg.loss.type


def make_shift3d(cfg: DeepConfig) -> Shift3D:
    from covidmtl.deep.shift3d import Shift3D

    s = cfg.shift3d
    return Shift3D(s.max_shift_fraction, s.probability, s.pad, s.pad_value)


def build_model(spec: VariantSpec, cfg: DeepConfig, n_features: int = 0) -> nn.Module:
    """A freshly initialised model of the variant (for transfer variants: the two-task source
    architecture is built, use :func:`prepare_transfer` after loading its weights)."""
    from covidmtl.deep.mtl import CovidMTL
    from covidmtl.deep.resnet3d import ResNet3D34
    from covidmtl.deep.squeezenet3d import SqueezeNet3D, SqueezeNet3DTrunk

    width, sq = cfg.width_multiplier, cfg.squeezenet
    if spec.architecture == "resnet3d":
        (task,) = spec.tasks
        return ResNet3D34(task, TASK_CLASSES[task], width=width, conv1_kernel=cfg.resnet.conv1_kernel,
                          conv1_stride=cfg.resnet.conv1_stride, bn_momentum=cfg.bn_momentum)
    if spec.architecture in {"squeezenet3d", "shiftnet3d"}:
        (task,) = spec.tasks
        shift = make_shift3d(cfg) if spec.shift3d else None
        return SqueezeNet3D(task, TASK_CLASSES[task], width=width, squeeze_base=sq.squeeze_base,
                            stem_stride=sq.stem_stride, dropout=sq.dropout, shift3d=shift,
                            bn_momentum=cfg.bn_momentum)
    if spec.architecture == "covid_mtl":
        trunk = SqueezeNet3DTrunk(width=width, squeeze_base=sq.squeeze_base, stem_stride=sq.stem_stride,
                                  shift3d=make_shift3d(cfg) if spec.shift3d else None, bn_momentum=cfg.bn_momentum)
        tasks = spec.transfer_from if spec.is_transfer else spec.tasks
        return CovidMTL({t: TASK_CLASSES[t] for t in tasks}, trunk, n_features=n_features if spec.features else 0,
                        task_channels=cfg.mtl.task_channels, fnn_hidden=cfg.mtl.fnn_hidden, dropout=sq.dropout)
    raise ValueError(f"unknown architecture {spec.architecture!r}")


def prepare_transfer(model: CovidMTL, spec: VariantSpec, cfg: DeepConfig) -> CovidMTL:
    """Replace the task layers by the variant's tasks and freeze the convolutional trunk."""
    model.replace_tasks(spec.task_classes)
    model.freeze_trunk(freeze_batchnorm=cfg.transfer.freeze_batchnorm)
    return model
