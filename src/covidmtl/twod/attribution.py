"""``covidmtl twod-attrib``: Integrated Gradients and DeepLIFT maps of slice classifiers over the
lesion mask (MGA Figure 10), with Captum.

    covidmtl twod-attrib --run-dirs results/twod/runs/resnet18_cbam results/twod/runs/mga \
        --slices-index results/twod/slices/index.csv --params '<json of config "twod">' \
        --out-dir results/twod/report_mga/attribution

For the first ``twod.attribution.n_slices`` COVID-19 test slices with a non-empty lesion mask,
each model's attribution of the COVID-19 logit (class 1 in both the binary and the 3-class
task) to the input pixels is computed against a black baseline image. Writes
``figure10_attribution.{png,pdf}`` (image with lesion contour, then |attribution| per model and
method) and ``attribution_in_mask.{csv,md}``: per model, method and slice the share of the
absolute attribution that falls inside the lesion mask, beside the mask's share of the image
(the share a map without any preference would give).
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from covidmtl.errors import PipelineInputError
from covidmtl.tables import write_table
from covidmtl.twod import figures
from covidmtl.twod.config import TwoDConfig
from covidmtl.twod.data import ensure_split, load_slice, read_slice_index
from covidmtl.twod.experiment import load_model_file, rebuild_model

log = logging.getLogger(__name__)

STAGE = "twod-attrib"
COVID_CLASS = 1
METHOD_LABELS = {"integrated_gradients": "Integrated Gradients", "deeplift": "DeepLIFT"}


class LogitsOf(nn.Module):
    """A twod model as ``image -> logits`` (what Captum attributes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image=image)["label"]


def attribute(model: nn.Module, images: torch.Tensor, method: str, target: int = COVID_CLASS,
              ig_steps: int = 50) -> np.ndarray:
    """(N, H, W) attributions of ``target``'s logit to the pixels of ``images`` (N, 1, H, W)."""
    wrapped = LogitsOf(model).eval()
    baseline = torch.zeros_like(images)
    with warnings.catch_warnings():
        # Captum's notices about setting requires_grad and hooking activations
        warnings.filterwarnings("ignore", message=".*(require gradients|hooks and attributes).*")
        return _attribute(wrapped, images, baseline, method, target, ig_steps)


def _attribute(wrapped: nn.Module, images: torch.Tensor, baseline: torch.Tensor, method: str, target: int,
               ig_steps: int) -> np.ndarray:
    from captum.attr import DeepLift, IntegratedGradients

    if method == "integrated_gradients":
        attr = IntegratedGradients(wrapped).attribute(images, baselines=baseline, target=target, n_steps=ig_steps,
                                                      internal_batch_size=max(1, len(images)))
    elif method == "deeplift":
        attr = DeepLift(wrapped).attribute(images, baselines=baseline, target=target)
    else:
        raise ValueError(f"unknown attribution method {method!r}")
    return attr.detach()[:, 0].cpu().numpy()


def share_in_mask(attribution: np.ndarray, mask: np.ndarray) -> float:
    a = np.abs(attribution)
    total = a.sum()
    return float(a[mask].sum() / total) if total > 0 else float("nan")


def pick_slices(index: pd.DataFrame, n: int, size: int) -> list[dict]:
    """The first ``n`` COVID-19 test slices (by slice_id) whose lesion mask is non-empty."""
    test = index[(index["split"] == "test") & (index["label_binary"] == 1) & index["has_mask"]].sort_values("slice_id")
    picked = []
    for row in test.itertuples(index=False):
        image, mask = load_slice(row.path, row.mask_path, size, row.subject_id)
        if mask.any():
            picked.append({"slice_id": row.slice_id, "image": image, "mask": mask})
        if len(picked) >= n:
            break
    return picked


def run(run_dirs: list[Path], index_path: Path, cfg: TwoDConfig, out_dir: Path) -> pd.DataFrame:
    models = []
    for d in run_dirs:
        path = Path(d) / "model.pt"
        if not path.is_file():
            log.warning("%s: no model.pt (run missing or unfinished); left out", d)
            continue
        meta = load_model_file(path)
        model, spec, model_cfg = rebuild_model(meta)
        if not spec.classifies:
            raise PipelineInputError(STAGE, f"{spec.name} is not a classifier", path=path,
                                     hint="pass run folders of classification variants (e.g. resnet18_cbam, mga)")
        models.append((spec, model_cfg, model, int(meta["input_size"])))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_fig: dict[str, dict] = {}
    records = []
    columns = []
    if models:
        split_cfg = models[0][1]
        index = ensure_split(read_slice_index(index_path), split_cfg.split.fractions, split_cfg.seed, index_path)
    for spec, model_cfg, model, size in models:
        slices = pick_slices(index, cfg.attribution.n_slices, size)
        if not slices:
            log.warning("no COVID-19 test slice with a lesion mask: nothing to attribute")
            break
        images = torch.from_numpy(np.stack([s["image"] for s in slices])[:, None].astype(np.float32))
        for method in cfg.attribution.methods:
            col = f"{spec.label}: {METHOD_LABELS[method]}"
            columns.append(col)
            maps = attribute(model, images, method, COVID_CLASS, cfg.attribution.ig_steps)
            for s, a in zip(slices, maps):
                row = rows_fig.setdefault(s["slice_id"], {"name": s["slice_id"], "image": s["image"],
                                                          "mask": s["mask"], "maps": {}, "share_in_mask": {}})
                if row["image"].shape != a.shape:  # models of different input sizes: show at the first size
                    a = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(a)[None, None],
                                                                   size=row["image"].shape, mode="bilinear")[0, 0])
                share = share_in_mask(a, row["mask"])
                row["maps"][col], row["share_in_mask"][col] = a, share
                records.append({"model": spec.label, "variant": spec.name, "method": METHOD_LABELS[method],
                                "slice_id": s["slice_id"], "share_in_mask": share,
                                "mask_area_share": float(row["mask"].mean())})
    table = pd.DataFrame(records)
    figures.attribution_grid(list(rows_fig.values()), columns, out_dir / "figure10_attribution",
                             "Figure 10: attribution of the COVID-19 output over the lesion (green contour)")
    if table.empty:
        write_table(pd.DataFrame({"note": ["no classifier runs or no COVID-19 test slice with a lesion mask"]}),
                    out_dir / "attribution_in_mask")
    else:
        summary = (table.groupby(["model", "variant", "method"], sort=False)
                   .agg(share_in_mask=("share_in_mask", "mean"), mask_area_share=("mask_area_share", "mean"),
                        slices=("slice_id", "count")).reset_index())
        write_table(pd.concat([summary.assign(slice_id="mean"), table], ignore_index=True),
                    out_dir / "attribution_in_mask")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="covidmtl twod-attrib", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dirs", type=Path, nargs="+", required=True, help="twod-train folders of classifiers")
    ap.add_argument("--slices-index", type=Path, required=True, help="the slice index the models were trained on")
    ap.add_argument("--params", default="{}", help="JSON of the `twod` config section (attribution.* knobs)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    run(args.run_dirs, args.slices_index, TwoDConfig.from_json(args.params), args.out_dir)
    return 0
