"""Parameters of the lung-segmentation stage (config section ``lungseg``).

Every threshold and radius of the classical segmentation (Kaggle Data Science Bowl 2017
style, cited by COVID-MTL section 2.1) and of the active-contour refinement (COVID-MTL
Algorithm 1) is a field here with the paper's value as default.  Sizes are in millimetres
and converted to voxels with the image spacing, so the stage works on any curated grid.
Defaults marked "authors' code" come from the public COVID-MTL implementation
(``LungSegmentation.py``) where the paper gives no number.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassicalParams:
    """Threshold-based initial lung segmentation (COVID-MTL section 2.1, DSB 2017 method)."""

    threshold_hu: float = -320.0
    """Voxels below this are air/lung; the DSB 2017 kernel the paper cites uses -320 HU."""
    airway_threshold_hu: float = -950.0
    """Airway lumen is tracked below this stricter threshold (lung parenchyma is ~ -850 HU)."""
    trachea_area_mm2: tuple[float, float] = (40.0, 700.0)
    """Axial cross-section range (mm^2) of a component accepted as trachea seed."""
    trachea_max_offset_mm: float = 40.0
    """Largest left-right distance (mm) of the trachea seed from the body midline."""
    trachea_min_length_mm: float = 10.0
    """The trachea seed must persist over at least this craniocaudal length (mm)."""
    airway_max_growth: float = 2.5
    """Airway tracking stops in a branch whose cross-section grows by more than this factor
    from one slice to the next (leak into lung parenchyma)."""
    airway_max_area_mm2: float = 1200.0
    """Airway tracking never accepts a slice component larger than this (mm^2)."""
    airway_dilation_mm: float = 2.0
    """The tracked airway lumen is grown by this much (mm) inside the air mask to remove its
    partial-volume rim before the lungs are separated."""
    bridge_erosion_mm: float = 2.0
    """Erosion (mm) that cuts thin bridges (partial volume across the diaphragm to gastric
    air) before the lungs are chosen; they are grown back inside the air mask afterwards."""
    min_lung_volume_ml: float = 200.0
    """A component smaller than this (ml) is not a lung (bowel gas, table cavities)."""
    require_two_lungs: bool = True
    """Fail (PipelineInputError) when only one lung is found."""
    split_min_side_fraction: float = 0.2
    """A single component with at least this fraction of its volume on each side of the body
    midline holds both lungs and is split by erosion."""
    split_max_erosion_mm: float = 12.0
    """Largest erosion (mm) tried when splitting joined lungs."""
    border_leak_area_mm2: float = 100.0
    """A slice whose border-connected air covers this much (mm^2) of the lung of the
    neighbouring slice has a lung open to the image border: PipelineInputError."""
    closing_radius_mm: float = 2.0
    """Morphological closing radius (mm) per lung that closes small gaps."""
    min_piece_area_mm2: float = 30.0
    """Per axial slice and lung, detached pieces smaller than this (mm^2) are dropped (the
    largest piece is always kept), as the DSB kernel keeps the largest structure per slice."""


@dataclass(frozen=True)
class RefineParams:
    """Active-contour refinement, COVID-MTL Algorithm 1 (section 2.1)."""

    closing_radius_mm: float = 10.0
    """Per-slice, per-lung closing radius (mm) of the seed; Algorithm 1 uses disk(10) on 1 mm
    voxels."""
    alpha: float = 0.02
    """Snake length (elasticity) weight; authors' code."""
    beta: float = 20.0
    """Snake smoothness (rigidity) weight; authors' code."""
    gamma: float = 0.01
    """Explicit time-step parameter of the snake (scikit-image default, as in the authors' code)."""
    w_line: float = 0.0
    """Attraction to brightness of the snake image (scikit-image default)."""
    w_edge: float = 1.0
    """Attraction to edges of the snake image (scikit-image default)."""
    max_move_mm: float = 1.0
    """Largest snake movement per iteration (mm): scikit-image's default of 1 pixel on the
    paper's 1 mm grid; converted to pixels with the in-plane spacing."""
    max_num_iter: int = 20
    """Snake iterations (authors' code); 0 = no snake, the closed outline is used as is."""
    convergence: float = 0.1
    """Snake convergence criterion (scikit-image default)."""
    snake_image: str = "masked"
    """Image the snake evolves on: 'masked' = the CT with everything outside the initial lung
    set to background (authors' code); 'ct' = the CT itself."""
    window_hu: tuple[float, float] = (-1024.0, 31743.0)
    """HU interval mapped linearly to [0, 1] (clipped) before the snake sees the image.  The
    default is the authors' scale: their code hands scikit-image the HU + 1024 image as
    integers, which ``img_as_float`` divides by 32767, so the image forces stay weak
    against the snake's rigidity and the snake keeps the closed outline (smoothed).  A
    narrow window (e.g. [-1024, 400]) makes the edges dominate and pulls the snake back
    into lesion bites."""
    smoothing_sigma_mm: float = 0.0
    """Gaussian smoothing (mm) of the snake image; 0 = none (authors' code)."""
    min_area_mm2: float = 30.0
    """Per-slice lung pieces smaller than this (mm^2) are kept unchanged, not refined."""
    point_spacing_mm: float = 1.0
    """Distance between snake points (mm) after resampling the seed contour: one point per
    pixel on the paper's 1 mm grid.  Kept in mm so that the snake's rigidity acts on the same
    physical length whatever the curated spacing."""


@dataclass(frozen=True)
class OutputParams:
    """Masked lung volume handed to the feature extractor and the CNN (COVID-MTL section 2.1)."""

    background_hu: float = -1024.0
    """Value of CT voxels outside the lungs in the masked volume (authors' code: 0 on the
    HU+1024 scale, i.e. -1024 HU)."""
    crop_margin_mm: float = 5.0
    """Margin (mm) around the lung bounding box of the cropped volume."""


@dataclass(frozen=True)
class LungSegParams:
    classical: ClassicalParams = field(default_factory=ClassicalParams)
    refine: RefineParams = field(default_factory=RefineParams)
    output: OutputParams = field(default_factory=OutputParams)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "LungSegParams":
        """Build from the config section; unknown keys are an error (typos must not pass)."""
        data = dict(data or {})
        parts = {"classical": ClassicalParams, "refine": RefineParams, "output": OutputParams}
        unknown = set(data) - set(parts)
        if unknown:
            raise ValueError(f"unknown lungseg config keys: {sorted(unknown)}; allowed: {sorted(parts)}")
        kwargs = {}
        for name, klass in parts.items():
            section = dict(data.get(name) or {})
            names = {f.name: f for f in dataclasses.fields(klass)}
            bad = set(section) - set(names)
            if bad:
                raise ValueError(f"unknown lungseg.{name} keys: {sorted(bad)}; allowed: {sorted(names)}")
            for key, value in section.items():
                if isinstance(value, list):
                    section[key] = tuple(value)
            kwargs[name] = klass(**section)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | None) -> "LungSegParams":
        return cls.from_dict(json.loads(text) if text else {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def coerce(params, section: str):
    """The ``section`` ('classical', 'refine', 'output') of whatever the caller passed:
    None (defaults), that section's dataclass, a whole :class:`LungSegParams`, or a dict of
    either the whole config section or just this part."""
    klass = {"classical": ClassicalParams, "refine": RefineParams, "output": OutputParams}[section]
    if params is None:
        return klass()
    if isinstance(params, klass):
        return params
    if isinstance(params, LungSegParams):
        return getattr(params, section)
    if isinstance(params, dict):
        if set(params) <= {"classical", "refine", "output"}:
            return getattr(LungSegParams.from_dict(params), section)
        return getattr(LungSegParams.from_dict({section: params}), section)
    raise TypeError(f"lungseg {section} parameters: expected {klass.__name__}, LungSegParams or dict, got {type(params).__name__}")
