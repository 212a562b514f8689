"""DeepSC-COVID networks (Wang et al., IEEE TMI 2021, section IV) and the two baselines.

- :class:`Inception3D` -- 3D inception block: four branches of cascaded 3D convolutions
  (1; 1-3; 1-3-3; maxpool-1), each convolution followed by group normalisation and ReLU,
  concatenated (section IV-A).
- :class:`CrossStitch` -- learnable 2x2 mixing of the two tasks' features after dimension
  matching (1x1x1 convolutions where the channel counts differ; identity otherwise)
  (section IV-A, after Misra et al. 2016).
- :class:`LesionSubnet` -- 3D U-shape with three down- and three up-transitions; an
  intermediate segmentation (1x1x1 conv) at each of the four resolutions, upsampled and
  combined with weights eta_1..eta_4 by the segmentation generator (eq. 3).
- :class:`ClassificationSubnet` -- encoder of three units (64, 128, 256 channels), global
  average pooling of each unit, concatenation, one fully connected layer to the 3 classes
  (eq. 4); lesion evidence masks V_l = sum_k w_{c,l,k} F_l^k from the unit maps and the
  class-c weights of the fully connected layer (eq. 5; class activation maps per layer).
- :class:`DeepSC` -- the whole model: cross-task feature subnet + both subnets; each task's
  input passes through both inception blocks so that the cross-stitch mixes features of
  the same voxels (the segmentation input is a 3D patch, the classification input N
  equidistant slices, section V-A).
- Baselines (Table II): :class:`ResNet50Classifier` (MONAI ResNet-50, 3D) and
  :class:`UNet3DSegmenter` (MONAI's plain 3D U-Net).

Every model returns a dict: ``seg_logits`` (B, 1, D, H, W) and ``seg_intermediate`` (list of
logits, coarse to fine) for the segmentation input; ``cls_logits`` (B, 3) and
``cls_features`` (the three unit maps) for the classification input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from covidmtl.deep.squeezenet3d import scaled
from covidmtl.deepsc.config import DeepSCConfig

N_CLASSES = 3


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class ConvGNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, groups: int = 8) -> None:
        super().__init__(nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=False), group_norm(cout, groups),
                         nn.ReLU(inplace=True))


class Inception3D(nn.Module):
    """3D inception block: branches 1x1x1 | 1x1x1-3x3x3 | 1x1x1-3x3x3-3x3x3 | maxpool-1x1x1."""

    def __init__(self, cin: int, cout: int, groups: int = 8) -> None:
        super().__init__()
        b = max(1, cout // 4)
        widths = [b, b, b, cout - 3 * b]
        self.branches = nn.ModuleList([
            ConvGNReLU(cin, widths[0], 1, groups),
            nn.Sequential(ConvGNReLU(cin, widths[1], 1, groups), ConvGNReLU(widths[1], widths[1], 3, groups)),
            nn.Sequential(ConvGNReLU(cin, widths[2], 1, groups), ConvGNReLU(widths[2], widths[2], 3, groups),
                          ConvGNReLU(widths[2], widths[2], 3, groups)),
            nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), ConvGNReLU(cin, widths[3], 1, groups)),
        ])
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class PlainBlock(nn.Sequential):
    """Ablation 'without the inception block': plain 3x3x3 convolutions (GN, ReLU), same width."""

    def __init__(self, cin: int, cout: int, groups: int = 8) -> None:
        super().__init__(ConvGNReLU(cin, cout, 3, groups), ConvGNReLU(cout, cout, 3, groups))
        self.out_channels = cout


class CrossStitch(nn.Module):
    """[F_les; F_cls] = [[a_ss, a_sc], [a_cs, a_cc]] [F_seg; M(F_other)] (Misra et al. 2016).

    ``mix_for_seg(f_seg, f_cls)`` gives the lesion features from the two blocks' features of
    the segmentation input, ``mix_for_cls(f_seg, f_cls)`` the classification features from
    those of the classification input. ``M`` is the dimension matching: a 1x1x1 convolution
    where the channel counts differ, identity otherwise. ``learnable=False`` keeps the
    matrix fixed (identity = the ablation without the unit).
    """

    def __init__(self, seg_channels: int, cls_channels: int, init: tuple[float, float] = (0.9, 0.1),
                 learnable: bool = True) -> None:
        super().__init__()
        same, other = float(init[0]), float(init[1])
        alpha = torch.tensor([[same, other], [other, same]], dtype=torch.float32)
        if learnable:
            self.alpha = nn.Parameter(alpha)
        else:
            # Not in the state dict: --init-from a pre-trained model (learned alpha) must not
            # turn the ablation's fixed identity into a learned feature exchange.
            self.register_buffer("alpha", alpha, persistent=False)
        self.cls_to_seg = nn.Identity() if cls_channels == seg_channels else nn.Conv3d(cls_channels, seg_channels, 1)
        self.seg_to_cls = nn.Identity() if cls_channels == seg_channels else nn.Conv3d(seg_channels, cls_channels, 1)

    def set_alpha(self, matrix) -> None:
        with torch.no_grad():
            self.alpha.copy_(torch.as_tensor(matrix, dtype=self.alpha.dtype))

    def mix_for_seg(self, f_seg: torch.Tensor, f_cls: torch.Tensor) -> torch.Tensor:
        a = self.alpha.to(f_seg.dtype)
        return a[0, 0] * f_seg + a[0, 1] * self.cls_to_seg(f_cls)

    def mix_for_cls(self, f_seg: torch.Tensor, f_cls: torch.Tensor) -> torch.Tensor:
        a = self.alpha.to(f_cls.dtype)
        return a[1, 0] * self.seg_to_cls(f_seg) + a[1, 1] * f_cls


class LesionSubnet(nn.Module):
    """3D U-shape (3 down, 3 up) + segmentation generator S = sum_i eta_i Up(S_i) (eq. 3).

    The intermediate segmentations S_1..S_4 (logits, 1 channel) come from the bottleneck
    (1/8) and the three up-transitions (1/4, 1/2, 1); the generator combines their
    upsampled logits.
    """

    def __init__(self, cin: int, channels: tuple[int, int, int, int], groups: int = 8,
                 eta_init=(0.25, 0.25, 0.25, 0.25), learn_eta: bool = True) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.enc0 = nn.Sequential(ConvGNReLU(cin, c0, 3, groups), ConvGNReLU(c0, c0, 3, groups))
        self.down = nn.ModuleList([
            nn.Sequential(nn.MaxPool3d(2), ConvGNReLU(a, b, 3, groups), ConvGNReLU(b, b, 3, groups))
            for a, b in ((c0, c1), (c1, c2), (c2, c3))])
        self.upconv = nn.ModuleList([nn.ConvTranspose3d(a, b, 2, stride=2) for a, b in ((c3, c2), (c2, c1), (c1, c0))])
        self.updec = nn.ModuleList([
            nn.Sequential(ConvGNReLU(2 * b, b, 3, groups), ConvGNReLU(b, b, 3, groups)) for b in (c2, c1, c0)])
        self.heads = nn.ModuleList([nn.Conv3d(c, 1, 1) for c in (c3, c2, c1, c0)])  # coarse -> fine
        eta = torch.tensor([float(e) for e in eta_init], dtype=torch.float32)
        if learn_eta:
            self.eta = nn.Parameter(eta)
        else:
            self.register_buffer("eta", eta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [self.enc0(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        h = skips[3]
        intermediate = [self.heads[0](h)]
        for i, (up, dec) in enumerate(zip(self.upconv, self.updec)):
            h = dec(torch.cat([up(h), skips[2 - i]], dim=1))
            intermediate.append(self.heads[i + 1](h))
        size = x.shape[2:]
        eta = self.eta.to(x.dtype)
        out = sum(eta[i] * (s if s.shape[2:] == size else F.interpolate(s, size=size, mode="trilinear",
                                                                        align_corners=False))
                  for i, s in enumerate(intermediate))
        return out, intermediate


class ClassificationSubnet(nn.Module):
    """Three encoder units (each: 2x2x2 max-pool, two 3x3x3 conv-GN-ReLU), GAP of each unit,
    concatenation and one fully connected layer (eq. 4)."""

    def __init__(self, cin: int, channels: tuple[int, int, int], groups: int = 8, dropout: float = 0.0,
                 n_classes: int = N_CLASSES) -> None:
        super().__init__()
        units, prev = [], cin
        for c in channels:
            units.append(nn.Sequential(nn.MaxPool3d(2), ConvGNReLU(prev, c, 3, groups), ConvGNReLU(c, c, 3, groups)))
            prev = c
        self.units = nn.ModuleList(units)
        self.channels = tuple(int(c) for c in channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(sum(self.channels), n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for unit in self.units:
            x = unit(x)
            maps.append(x)
        pooled = torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)
        return self.fc(self.dropout(pooled)), maps

    def class_weights(self, layer: int) -> torch.Tensor:
        """(n_classes, C_layer) block of the fully connected weights that reads unit ``layer``."""
        start = sum(self.channels[:layer])
        return self.fc.weight[:, start:start + self.channels[layer]]

    def evidence_masks(self, maps: list[torch.Tensor], classes: torch.Tensor) -> list[torch.Tensor]:
        """V_l = sum_k w_{c,l,k} F_l^k for each sample's class c (eq. 5); (B, 1, d_l, h_l, w_l), raw."""
        out = []
        for layer, fmap in enumerate(maps):
            w = self.class_weights(layer)[classes].to(fmap.dtype)  # (B, C_l)
            out.append(torch.einsum("bc,bcdhw->bdhw", w, fmap)[:, None])
        return out


def normalise_evidence(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ReLU and division by the per-sample maximum: evidence in [0, 1] (class activation map style)."""
    v = F.relu(v.float())
    peak = v.flatten(1).amax(dim=1).clamp_min(eps)
    return v / peak.view(-1, *([1] * (v.dim() - 1)))


class DeepSC(nn.Module):
    """DeepSC-COVID. ``forward(seg_image=None, cls_image=None, mode=...)``.

    mode ``"seg"``/``"cls"``: one task alone, features of its own inception block only (the
    pre-training stage and the single-task ablations); ``"joint"``: both inputs through both
    inception blocks, mixed by the cross-stitch unit (fine-tuning, and inference).
    """

    def __init__(self, cfg: DeepSCConfig, tasks: tuple[str, ...] = ("seg", "cls"), inception: bool = True,
                 cross_stitch: bool = True) -> None:
        super().__init__()
        m, w = cfg.model, cfg.width_multiplier
        g = m.norm_groups
        feat = max(4, scaled(m.inception_channels, w))
        block = Inception3D if inception else PlainBlock
        self.tasks = tuple(tasks)
        self.has_cross_stitch = bool(cross_stitch) and len(self.tasks) == 2
        if "seg" in self.tasks:
            self.seg_block = block(1, feat, g)
            self.lesion = LesionSubnet(feat, tuple(scaled(c, w) for c in m.unet_channels), g, m.eta_init, m.learn_eta)
        if "cls" in self.tasks:
            self.cls_block = block(1, feat, g)
            self.classifier = ClassificationSubnet(feat, tuple(scaled(c, w) for c in m.cls_channels), g, m.dropout)
        if len(self.tasks) == 2:
            # Without the unit (ablation) the matrix stays the identity: no exchange between tasks.
            init = m.cross_stitch_init if self.has_cross_stitch else (1.0, 0.0)
            self.cross_stitch = CrossStitch(feat, feat, init, learnable=self.has_cross_stitch)

    def forward(self, seg_image: torch.Tensor | None = None, cls_image: torch.Tensor | None = None,
                mode: str = "joint") -> dict[str, torch.Tensor | list[torch.Tensor]]:
        out: dict = {}
        joint = mode == "joint" and len(self.tasks) == 2
        if seg_image is not None and "seg" in self.tasks and mode in ("seg", "joint"):
            f = self.seg_block(seg_image)
            if joint:
                f = self.cross_stitch.mix_for_seg(f, self.cls_block(seg_image))
            out["seg_logits"], out["seg_intermediate"] = self.lesion(f)
        if cls_image is not None and "cls" in self.tasks and mode in ("cls", "joint"):
            f = self.cls_block(cls_image)
            if joint:
                f = self.cross_stitch.mix_for_cls(self.seg_block(cls_image), f)
            out["cls_logits"], out["cls_features"] = self.classifier(f)
        return out

    def evidence_masks(self, cls_features: list[torch.Tensor], classes: torch.Tensor) -> list[torch.Tensor]:
        return self.classifier.evidence_masks(cls_features, classes)

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names of the segmentation and classification parts (for --init-from)."""
        names = [n for n, _ in self.named_parameters()]
        return {"seg": [n for n in names if n.startswith(("seg_block.", "lesion."))],
                "cls": [n for n in names if n.startswith(("cls_block.", "classifier."))]}


class ResNet50Classifier(nn.Module):
    """Table II classification baseline: MONAI's 3D ResNet-50 on the N-slice input."""

    tasks = ("cls",)

    def __init__(self, cfg: DeepSCConfig) -> None:
        super().__init__()
        from monai.networks.nets import resnet50

        self.net = resnet50(spatial_dims=3, n_input_channels=1, num_classes=N_CLASSES,
                            widen_factor=cfg.width_multiplier)

    def forward(self, seg_image=None, cls_image=None, mode: str = "cls") -> dict:
        return {} if cls_image is None else {"cls_logits": self.net(cls_image)}

    def parameter_groups(self) -> dict[str, list[str]]:
        return {"seg": [], "cls": [n for n, _ in self.named_parameters()]}


class UNet3DSegmenter(nn.Module):
    """Table II segmentation baseline: MONAI's plain 3D U-Net (no residual units) on patches."""

    tasks = ("seg",)

    def __init__(self, cfg: DeepSCConfig) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        channels = tuple(scaled(c, cfg.width_multiplier) for c in cfg.model.unet_channels)
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=channels, strides=(2, 2, 2),
                        num_res_units=0, norm=("group", {"num_groups": math.gcd(cfg.model.norm_groups, channels[0])}))

    def forward(self, seg_image=None, cls_image=None, mode: str = "seg") -> dict:
        return {} if seg_image is None else {"seg_logits": self.net(seg_image), "seg_intermediate": []}

    def parameter_groups(self) -> dict[str, list[str]]:
        return {"seg": [n for n, _ in self.named_parameters()], "cls": []}
