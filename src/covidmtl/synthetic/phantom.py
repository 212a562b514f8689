"""Synthetic chest-CT phantom: the image generator of the built-in cohort.

One call of :func:`generate_subject` draws one subject (anatomy, acquisition
geometry, lesions) from ``np.random.default_rng(seed)`` and rasterises it on
the native scanner grid.  Everything is defined by continuous shapes in
millimetres (scaled by ``PhantomParams.size_scale``; 1.0 = adult), sampled at
voxel centres, so the ground-truth masks and the image come from the same
definitions.  Same labels + params + seed -> identical arrays.

Geometry / orientation
    Arrays are built in (z, y, x) order.  x increases toward the patient's
    LEFT, y toward POSTERIOR (the table is at large y), z toward SUPERIOR
    (slice 0 is the most inferior one): LPS with identity direction, origin
    = physical position of voxel (0, 0, 0), isocentre near the image centre.
    Spacing (s, s, sz): s drawn uniformly from ``inplane_spacing_mm``, sz from
    ``slice_spacing_mm``.  With ``inplane_matrix=None`` the square matrix is
    chosen so that the field of view covers body and table with a margin;
    with a fixed matrix s is drawn from [max(lo, FOV/matrix), hi] (the body is
    cropped only if even ``hi`` cannot cover it).  Slices of 3 mm and more
    are rendered as the average of 3 (>= 6 mm: 5) thin sub-slices (partial
    volume); the masks follow the same sub-slices: a voxel is lung (lesion)
    where most of its sub-slices are, so that mask and image agree at the
    lung bases and apices.  Coverage ~300 mm at scale 1 (lungs ~250 mm +
    upper abdomen below + lower neck above).

Anatomy (scale 1, all lengths x size_scale; per subject: body size x0.9-1.1,
women x0.93, lung height x0.92-1.08, body shifted +-25 mm (x) / +-15 mm (y))
    air -1000 HU; curved patient table 160 HU, 9 mm, 0-5 mm air gap under the
    (slightly flattened) back; elliptical body ~330 x 226 mm, slowly varying
    with z, with subcutaneous fat -100 HU (9-35 mm, more in women and with
    age; breasts in women; 70 % of the fat beyond 12 mm enlarges the body
    rather than shrinking the rib cage) and muscle +45 HU (thicker
    anteriorly / posteriorly, paraspinal muscles; shoulder soft tissue
    narrows the upper rib cage);
    12 oblique rib pairs (cortex +800, marrow +330, anterior costal cartilage
    +110), sternum, scapulae, thoracic spine (vertebral bodies: cortex +800,
    marrow 300..400 HU decreasing with age, discs +85, canal +22, posterior
    elements +620); mediastinum +30 HU; heart +40 HU (ellipsoidal, top ~1.5
    vertebral levels below the carina, rotated and shifted left: the left
    lung is smaller; below its equator it keeps the equator's cross-section
    down to the diaphragm (it rests on it: no lung under the heart), above
    it tapers as a flattened ellipsoid) with an epicardial fat shell -85 HU;
    ascending aorta, arch (bulging left, notching the left upper lung) and
    descending aorta +42 HU in a fat sleeve (left of the spine below the
    arch, moving medially onto the front of the vertebral bodies toward the
    diaphragm; para-aortic fat fills the convex hull of aorta, oesophagus and
    vertebral body, so the left lung passes smoothly from the aorta to the
    spine); pulmonary trunk and arteries;
    oesophagus (sometimes with air); liver +58 HU and upper abdomen +32 HU
    below the diaphragm (gastric air bubble with p = 0.4); trachea (radius
    ~8 mm x size_scale ** 0.15, not x size_scale: airway tracking tuned to
    adult scans still finds it on the coarse grids of small phantoms; wall
    ~2 mm) from the top slice to the carina (31 % of the lung height below
    the apex), main bronchi from the carina to the hila
    (mediastinal part forced out of the lung), continuing as open-ended lobar
    bronchi inside the lung: the airway air IS connected to the lung air (for
    slices thin enough to resolve the bronchi).
    Lungs: cavity inside the rib cage minus mediastinum (width varying with
    AP position and height), spine, heart and aorta; above dome-shaped
    diaphragms (domes 25 % of the lung height above the posterior
    costophrenic recesses, right dome higher; broad and flat-topped as in
    inspiration, steep toward the recesses); ellipsoidal apical caps; each
    lung one connected component; ~5 L at scale 1 (x size_scale**3).
    Parenchyma -862 HU (+-15 per subject, -0.6 HU per year of age above 50),
    smooth texture (+-12 HU) and a gravity gradient (+30..60 HU toward the
    posterior lung).  Artery and vein trees per lung grown by space
    colonisation (700 attractors each), radii by the pipe law (exponent 2.7)
    from 5 / 5.5 mm at the hilum down to ~1 mm (>= 0.4 mm), +40 HU, rendered
    with partial volume.  Image = sub-slice average -> Gaussian PSF
    (``blur_mm``) -> Gaussian noise (``noise_hu``) -> clip [-1024, 3071] ->
    int16.

Lesions (the planted effects; follow the four DeepSC-COVID findings)
    Shape: ellipsoid + 0-2 extra lobes (COVID) or union of 2-3 ellipsoids
    (CAP), deformed by smooth noise (15-35 %), clipped to the lung; the lesion
    mask is the half-maximum level of a soft edge (0.85-1.55 mm at scale
    <= 0.6, 1.4-2.6 mm at scale 1; x0.6 for consolidation / mixed); vessels stay visible through lesions
    (max rule), airway lumina stay air and are not lesion (air bronchograms).
    Planned volumes are met (the level set is chosen to reach the planned
    voxel count inside the lung; the nodules of a COVID lesion, below, come
    on top; a shortfall - overlap with earlier lesions, a nodule cluster
    limited by the room at the pleura - is carried over to the next lesion);
    a voxel shared by two lesions belongs to the denser one.
    Kinds and HU (target mean of the lesion voxels before PSF / slice
    averaging; the measured mean of the final image is stored in
    ``lesions[i]['mean_hu']`` and is lower for small lesions by partial
    volume at their edges):
      ggo            COVID: N(-570, 60) clipped to [-680, -420], "dense GGO"
                     -400..-350; CAP: N(-560, 60); texture 30-60 HU
      consolidation  COVID: -120..+30, CAP: -40..+40 (interior <= +55 HU);
                     texture 15-30 HU
      mixed          COVID subpleural: a GGO patch with consolidated nodules
                     at its pleural side (below); otherwise a consolidated
                     core (inner 45-70 % of the radius, CAP 70-88 %) with a
                     GGO rim
    COVID-19 (diagnosis3 'covid19'), by morbidity:
      =================  ========  ================  ==================  =========
      morbidity          lesions   % of lung volume  kinds ggo/mix/cons  confluent
      =================  ========  ================  ==================  =========
      mild               2-5       2-5               0.75 / 0.20 / 0.05  0
      regular            5-10      5-12              0.62 / 0.30 / 0.08  0
      severe             9-15      12-25             0.50 / 0.35 / 0.15  <= 1
      critically_ill     14-24     20-40             0.35 / 0.40 / 0.25  <= 2
      =================  ========  ================  ==================  =========
      Burden grows with severity mainly through MORE lesions and more GGO.
      Suspected cases (typical CT findings, negative NAT) are mostly NAT
      false negatives of non-severe patients: each draws its lesions as a
      mild (p = 0.5) or a regular case, so NAT disagrees with CT on scans
      that look like NAT-positive ones (COVID-MTL 5.2: NAT is the harder task).
      Sizes log-normal (sigma 0.7: large size spread).  85 %
      planned SUBPLEURAL: patches flattened along the pleura (tangential axes
      1.0-2.2 x the normal one), centred 0-35 % of their thickness inside the
      costal / diaphragmatic pleura; the rest peripheral but not touching.
      Sites weighted toward the posterior and lower lung (exp(1.2 v)
      exp(-1.0 h), v: AP position relative to the cavity, h: relative
      height); bilateral (the side alternates with probability 0.65).
      The dense (> -320 HU) subpleural parts are mostly small consolidated
      NODULES abutting the pleura: ellipsoids (scale 1: tangential semi-axis
      4-8.5 mm, x1-1.5 along z, normal semi-axis 4-8 mm) centred 45-80 % of
      their normal semi-axis inside the pleura, i.e. touching it over ~5-15 mm
      and reaching ~6-14 mm deep, separated by >= 4 mm (+ 1 pixel) of lung or
      GGO; nodule sizes shrink only as size_scale ** 0.3 (a lesion's size is a
      property of the disease, not of the body; fully scaled nodules would be
      a few pixels on the demo's grids).  They sit only where a ball of radius
      25 mm x size_scale inside the lung touches the pleura (not in the thin
      tips of the recesses or in the lung's corners, where a dense nodule
      would cut the tip off).  A subpleural 'mixed' lesion is a GGO patch
      with nodules worth 15-30 % of its volume under it; a subpleural
      'consolidation' is a cluster of nodules (no GGO) spread under a
      pleural footprint ~2x its volume.  At a -320 HU threshold each nodule
      is a narrow bite in the lung outline, which the 10 mm closing + active
      contour of COVID-MTL Algorithm 1 bridges; severe / critically ill also
      have at most 1 / 2 confluent subpleural consolidations (solid, capped
      at 0.6-1.2 % of the lung, the excess going to the next lesion), which
      it does not.  From 'mild' upward the 2/3/4/5 largest lesions
      (mild/regular/severe/critically_ill) are subpleural and dense (mixed or
      consolidation; for mild one mixed + one dense GGO) so that a -320 HU
      threshold clearly under-segments the lung at the chest wall.  'covid19'
      with morbidity 'control' is treated as 'suspected'.
    Community-acquired pneumonia (diagnosis3 'cap', any morbidity): 1-3
      lesions (p = 0.45, 0.35, 0.20), 3-8 % of the lung in total, sizes
      log-normal (sigma 0.35), unilateral with p = 0.7 (right 60 %); kinds
      consolidation 0.5 / mixed 0.4 / ggo 0.1 (bimodal HU: consolidation and
      GGO clusters); lobar-ish unions of 2-3 vertically elongated ellipsoids
      placed CENTRALLY: centre at least the lesion radius (+ margin) deep,
      sites weighted by exp(-distance to hilum / 45 mm), and lesion voxels
      kept > max(slice (+ sub-slice), pixel) spacing away from any pleura:
      never subpleural.
    Normal: no lesions.
    Per-lesion record (plain Python types): kind, side ('right' = patient
    right = small x), center_mm (physical x, y, z of the voxel centroid),
    volume_ml, mean_hu (final image), subpleural (a lesion voxel is
    face-adjacent to a non-lung voxel), distance_to_pleura_mm (centroid depth
    inside the lung from a Euclidean distance map on a ~2-3 mm grid), central
    (centroid within 45 % of the cavity half-width of the hilum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy import sparse
from skimage.morphology import convex_hull_image

__all__ = ["PhantomParams", "SyntheticCT", "generate_subject", "MORBIDITIES", "DIAGNOSES"]

DIAGNOSES = ("covid19", "cap", "normal")
MORBIDITIES = ("control", "suspected", "mild", "regular", "severe", "critically_ill")


@dataclass
class PhantomParams:
    size_scale: float = 1.0  # 1.0 = adult thorax (~340 x 240 mm body, lungs ~5 L)
    inplane_spacing_mm: tuple[float, float] = (0.6, 0.9)  # native in-plane spacing, drawn per subject
    slice_spacing_mm: tuple[float, float] = (1.0, 5.0)  # native slice spacing, drawn per subject
    inplane_matrix: int | None = None  # None: FOV covers body + table with a margin; else fixed
    noise_hu: float = 20.0  # std of Gaussian CT noise (HU)
    blur_mm: float = 0.7  # Gaussian PSF sigma applied before noise (mm)


@dataclass
class SyntheticCT:
    ct: sitk.Image  # int16 HU
    lung_mask: sitk.Image  # uint8 {0,1}: both lungs incl. lesions and vessels, excl. trachea / main bronchi
    lesion_mask: sitk.Image  # uint8 {0,1}
    lesions: list[dict]


# --------------------------------------------------------------------------- tissue classes
AIR, TABLE, FAT, MUSCLE, GLAND, MEDIAST, MEDFAT, HEART, AORTA, LIVER, ABD, LUNG = range(12)
AIR_TR, WALL, AIR_IN, WALL_IN, CORTEX, MARROW, CART, DISC, CANAL, GAS, BONE = range(12, 23)
_N_CLASSES = 23

_HU = np.zeros(_N_CLASSES, np.float32)
_HU[[AIR, TABLE, FAT, MUSCLE, GLAND, MEDIAST, MEDFAT, HEART, AORTA, LIVER, ABD]] = (
    -1000, 160, -100, 45, 15, 30, -85, 40, 42, 58, 32)
_HU[[AIR_TR, WALL, AIR_IN, WALL_IN, CORTEX, MARROW, CART, DISC, CANAL, GAS, BONE]] = (
    -1000, 35, -990, 10, 800, 330, 110, 85, 22, -1000, 620)
_TEX = np.zeros(_N_CLASSES, np.float32)  # amplitude (HU) of the smooth texture per class
_TEX[[FAT, MUSCLE, GLAND, MEDIAST, MEDFAT, HEART, AORTA, LIVER, ABD, LUNG, MARROW, BONE, CORTEX]] = (
    8, 7, 25, 10, 8, 4, 3, 5, 10, 12, 45, 40, 60)

_COVID = {
    #                 count     fraction of lung   P(ggo, mixed, consolidation)  forced dense  P(subpleural)  confluent
    "mild": ((2, 5), (0.02, 0.06), (0.75, 0.20, 0.05), 2, 0.85, 0),
    "regular": ((5, 10), (0.06, 0.15), (0.62, 0.30, 0.08), 3, 0.85, 0),
    "severe": ((9, 15), (0.15, 0.30), (0.50, 0.35, 0.15), 4, 0.85, 1),
    "critically_ill": ((14, 24), (0.25, 0.45), (0.35, 0.40, 0.25), 5, 0.85, 2),
}
# Suspected = CT-positive, NAT-negative: radiologists saw typical COVID-19 findings and the NAT
# (sensitivity well below 1 in early 2020) missed them; such a scan is drawn as a mild or a
# regular case. A trace of lesions instead made NAT the *easier* task on the demo (its CAP
# controls confound CT); with mild-or-regular lesions NAT is harder, as in COVID-MTL 5.2.
_SUSPECTED_AS = ("mild", "regular")
_SUSPECTED_P_MILD = 0.5
_KINDS = ("ggo", "mixed", "consolidation")
# consolidated nodules abutting the pleura ("bites" of the lung outline at a -320 HU threshold),
# at scale 1: tangential semi-axis w and normal semi-axis d (mm), gap between neighbours (mm);
# their size shrinks only as size_scale ** 0.3 (a lesion's size is a property of the disease,
# not of the body; a fully scaled nodule would be a few pixels on the demo's coarse grids).
# open: radius (mm, x size_scale) of a ball inside the lung that must touch the pleura there.
_FOCUS = dict(w=(4.0, 8.5), d=(4.0, 8.0), gap=4.0, open=25.0, size_exp=0.3)
_VESSEL_HU = 40.0


# --------------------------------------------------------------------------- small helpers
def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _perp(d: np.ndarray, rng) -> np.ndarray:
    """A random unit vector perpendicular to unit vector d."""
    r = rng.standard_normal(3)
    r -= r.dot(d) * d
    n = np.linalg.norm(r)
    if n < 1e-6:
        r = np.cross(d, [1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.cross(d, [0.0, 1.0, 0.0])
        n = np.linalg.norm(r)
    return r / n


def _rotate(v: np.ndarray, axis: np.ndarray, ang: float) -> np.ndarray:
    """Rodrigues rotation of v about unit axis."""
    c, s = math.cos(ang), math.sin(ang)
    return v * c + np.cross(axis, v) * s + axis * axis.dot(v) * (1 - c)


def _smooth_weights(n: int, d: float, corr: float):
    """Sparse (n, nodes) Gaussian interpolation weights (nodes every `corr` mm, sigma 0.75 corr,
    truncated at 3 sigma); rows have unit sum of squares."""
    length = n * d
    nodes = (np.arange(int(math.ceil(length / corr)) + 4) - 1.5) * corr
    pos = (np.arange(n) + 0.5) * d
    z = (pos[:, None] - nodes[None, :]) / (0.75 * corr)
    w = np.where(np.abs(z) < 3.0, np.exp(-0.5 * z * z), 0.0)
    w /= np.sqrt((w ** 2).sum(1, keepdims=True))
    return sparse.csr_matrix(w.astype(np.float32))


def _smooth_field_parts(rng, shape, spacing, corr):
    """Separable construction of a unit-variance smooth random field.

    Returns (Wz, X): Wz sparse (nz, cz), X (cz, ny * nx); rows of Wz @ X are the z-slices."""
    wz, wy, wx = (_smooth_weights(n, d, corr) for n, d in zip(shape, spacing))
    cz, cy, cx = wz.shape[1], wy.shape[1], wx.shape[1]
    ny, nx = shape[1], shape[2]
    g = rng.standard_normal((cz * cy, cx), dtype=np.float32)
    x = np.asarray(wx @ g.T, dtype=np.float32)  # (nx, cz*cy)
    x = np.ascontiguousarray(x.reshape(nx, cz, cy).transpose(2, 1, 0)).reshape(cy, cz * nx)  # (cy, cz*nx)
    x = np.asarray(wy @ x, dtype=np.float32).reshape(ny, cz, nx)  # (ny, cz, nx)
    x = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(cz, ny * nx)
    return wz, x


def _smooth_field(rng, shape, spacing, corr) -> np.ndarray:
    wz, x = _smooth_field_parts(rng, shape, spacing, corr)
    return np.asarray(wz @ x, dtype=np.float32).reshape(shape)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _norm_morbidity(m) -> str:
    m = str(m).strip().lower().replace("-", "_").replace(" ", "_")
    return {"critical": "critically_ill", "critically": "critically_ill"}.get(m, m)


# --------------------------------------------------------------------------- the phantom
class _Phantom:
    def __init__(self, labels: dict, params: PhantomParams, seed: int):
        self.p = params
        self.rng = np.random.default_rng(seed)
        self.diag = str(labels.get("diagnosis3", "normal")).strip().lower()
        if self.diag not in DIAGNOSES:
            raise ValueError(f"diagnosis3 must be one of {DIAGNOSES}, got {self.diag!r}")
        self.morb = _norm_morbidity(labels.get("morbidity", "control"))
        if self.morb not in MORBIDITIES:
            raise ValueError(f"morbidity must be one of {MORBIDITIES}, got {self.morb!r}")
        try:
            age = float(labels.get("age", 50))
        except (TypeError, ValueError):
            age = 50.0
        self.age = float(np.clip(50.0 if math.isnan(age) else age, 0, 100))
        self.female = str(labels.get("sex", "M")).strip().upper().startswith("F")

    # ------------------------------------------------------------------ sampling of the subject
    def sample_geometry(self):
        rng, p = self.rng, self.p
        s = self.s = float(p.size_scale)
        if s <= 0:
            raise ValueError("size_scale must be > 0")
        f = self.female
        fb = rng.uniform(0.9, 1.1) * (0.93 if f else 1.0)
        self.A = 165 * s * fb * rng.uniform(0.96, 1.04)
        self.B_ant = 108 * s * fb * rng.uniform(0.92, 1.08)
        self.B_post = 118 * s * fb * rng.uniform(0.92, 1.08)
        self.fat0 = s * (9 + 0.15 * max(self.age - 25, 0) + (6 if f else 0)) * rng.uniform(0.6, 1.5)
        self.mus0 = s * rng.uniform(8, 12) * (0.85 if f else 1.0) * (1 - 0.004 * max(self.age - 40, 0))
        # subcutaneous fat mostly adds to the body outline (the rib cage of an obese patient is
        # not much smaller), so that the lungs of small, obese subjects stay lungs
        extra = 0.7 * (self.fat0 - 12 * s)
        self.A += extra
        self.B_ant += extra
        self.B_post += extra
        self.trib = 9 * s
        self.Ac = self.A - (self.fat0 + self.mus0 + self.trib)
        self.Bca = self.B_ant - (self.fat0 + 1.5 * self.mus0 + self.trib)
        self.Bcp = self.B_post - (self.fat0 + 1.6 * self.mus0 + self.trib)

        # acquisition
        lo, hi = sorted(map(float, p.slice_spacing_mm))
        self.sz = rng.uniform(lo, hi) if hi > lo else lo
        ilo, ihi = sorted(map(float, p.inplane_spacing_mm))
        sp = rng.uniform(ilo, ihi) if ihi > ilo else ilo
        self.nsub = 2 * int(self.sz // 3.0) + 1
        self.dzf = self.sz / self.nsub

        # vertical layout
        fl = rng.uniform(0.92, 1.08) * (0.95 if f else 1.0)
        self.H_lung = 250 * s * fl
        m_bot = max(35 * s * rng.uniform(0.8, 1.2), 2 * self.sz + 2)
        m_top = max(28 * s * rng.uniform(0.8, 1.2), 2 * self.sz + 2)
        self.nz = int(math.ceil((m_bot + self.H_lung + m_top) / self.sz))
        self.H = self.nz * self.sz
        self.w_base = m_bot
        self.w_apex = m_bot + self.H_lung
        dd = 0.25 * self.H_lung * rng.uniform(0.85, 1.15)
        self.w_dome = {1: self.w_base + dd, 2: self.w_base + dd - 0.06 * self.H_lung * rng.uniform(0.3, 1.5)}
        self.w_top = self.w_apex - 0.42 * self.H_lung
        self.h_cap = self.w_apex - self.w_top
        self.w_car = self.w_apex - 0.31 * self.H_lung * rng.uniform(0.93, 1.07)
        self.k_phase = rng.uniform(0, 2 * math.pi)
        wgrid = np.linspace(0, self.H, 200)
        self.kmax = float(self._kfun(wgrid).max())

        # in-plane layout (body coordinates u = left, v = posterior, relative to the body centre)
        self.gap = rng.uniform(0.0, 5.0) * s
        self.t_table = max(9 * s, 3.0)
        self.shx = rng.uniform(-25, 25) * s
        self.shy = rng.uniform(-15, 15) * s
        margin = 12 * s + 4
        hx = self.A * self.kmax + abs(self.shx) + margin
        hy_ant = self.B_ant * self.kmax + (28 * s if f else 0) + abs(self.shy) + margin
        hy_post = self.B_post * self.kmax + self.gap + self.t_table + abs(self.shy) + margin
        half = max(hx, hy_ant, hy_post)
        if p.inplane_matrix is None:
            n = int(math.ceil(2 * half / sp))
        else:
            n = int(p.inplane_matrix)
            need = 2 * half / n
            if sp < need:
                sp = min(max(need, ilo), ihi) if need <= ihi else ihi
        self.n, self.sp = n, sp
        # physical grid: isocentre at 0, body centre at (shx, shy)
        self.x0 = -(n - 1) / 2 * sp
        self.y0 = -(n - 1) / 2 * sp
        self.z_origin = float(np.round(rng.uniform(-450, -150), 1))
        self.U1 = (self.x0 + np.arange(n) * sp - self.shx).astype(np.float32)
        self.V1 = (self.y0 + np.arange(n) * sp - self.shy).astype(np.float32)
        self.nzf = self.nz * self.nsub
        self.Wf = ((np.arange(self.nzf) + 0.5) * self.dzf).astype(np.float32)

        # mediastinum, spine, airways, vessels
        self.m0 = 18 * s
        self.Rv = 16 * s * rng.uniform(0.92, 1.08)
        self.v_vb = self.B_post * 0.52
        self.v_cn = self.v_vb + self.Rv + 6 * s
        self.Rc = 7 * s
        self.Pv = 25 * s * fl
        self.v_phase = rng.uniform(0, self.Pv)
        # the airway calibre barely shrinks with size_scale, so that the trachea stays an air
        # tube of adult-like cross-section (>~ 6 mm radius) that airway tracking tuned to adult
        # scans resolves on the coarse grids of the small-scale demo
        self.R_tr = 8 * s ** 0.15 * rng.uniform(0.9, 1.1) * (0.93 if f else 1.0)
        self.tw = max(2.0 * s, 0.6 * sp)
        self.u_tr = -2 * s
        self.v_tr = self.v_vb - self.Rv - 16 * s - self.R_tr
        self.u_es, self.v_es, self.R_es = 5 * s, self.v_vb - self.Rv - 7 * s, 6.5 * s
        self.es_air = rng.random() < 0.35
        self.u_da, self.v_da, self.R_da = self.Rv + 9 * s, self.v_vb - self.Rv + 3 * s, 11 * s * rng.uniform(0.9, 1.1) * (1 + 0.003 * max(self.age - 40, 0))
        self.heart = dict(
            u=16 * s, v=-self.Bca + 44 * s,
            a=np.array([60, 45, 45]) * s * rng.uniform(0.9, 1.1),
            beta=math.radians(35 + rng.uniform(-8, 8)))
        # the heart's top (base) lies ~1.5 vertebral levels below the carina, under the hila
        self.heart["w"] = self.w_car - 0.14 * self.H_lung - self.heart["a"][2]
        self.u_aa, self.v_aa, self.R_aa = -10 * s, -self.Bca + 30 * s, 14 * s * rng.uniform(0.9, 1.1)
        self.w_arch = self.w_car + 25 * s
        self.w_aa0 = self.heart["w"] + 0.3 * self.heart["a"][2]
        self.v_hil = self.v_tr - 4 * s
        self.hilum = {1: np.array([-(self.m0 + 9 * s), self.v_hil, self.w_car - 14 * s]),
                      2: np.array([self.m0 + 9 * s, self.v_hil, self.w_car - 22 * s])}
        self.carina = np.array([self.u_tr, self.v_tr, self.w_car])
        self.r_b = {1: 0.75 * self.R_tr, 2: 0.68 * self.R_tr}
        self.gas_bubble = rng.random() < 0.4
        # rib cage
        self.rib_pitch = 24 * s * fl
        self.rib_h = 9 * s
        self.rib_top = self.w_apex + 8 * s
        self.rib_drop = 2.2 * self.rib_pitch
        self.Wst = 14 * s
        self.w_scap = (self.w_car - 0.30 * self.H_lung, self.w_apex + 0.05 * self.H_lung)
        self.t_scap = max(1.5 * s, 0.6 * sp)
        self.w_st = (self.w_dome[1] - 0.05 * self.H_lung, self.w_apex - 0.08 * self.H_lung)
        # breasts
        self.breasts = None
        if f:
            self.breasts = dict(h=24 * s * rng.uniform(0.5, 1.4), w=self.w_dome[1] + 0.12 * self.H_lung, wz=45 * s * rng.uniform(0.85, 1.2))
        # parenchyma
        self.lung_hu = -862 + rng.uniform(-15, 15) - 0.6 * (self.age - 50)
        self.g_amp = rng.uniform(30, 60)
        self.marrow_hu = float(np.clip(380 - 1.2 * (self.age - 40), 300, 400))

    def _kfun(self, w):
        H = self.H
        return 1 + 0.035 * np.sin(2 * np.pi * np.asarray(w) / H * 0.9 + self.k_phase) - 0.05 * ((np.asarray(w) - 0.55 * H) / (0.55 * H)) ** 2

    # ------------------------------------------------------------------ precomputed 2-D fields
    def precompute(self):
        s = self.s
        UU = self.U1[None, :]
        VV = self.V1[:, None]
        A = np.float32(self.A)
        Bv = np.where(VV > 0, np.float32(1.04 * self.B_post), np.float32(self.B_ant)).astype(np.float32)
        un, vn = UU / A, VV / Bv
        rho = np.sqrt(un ** 2 + vn ** 2)
        grad = np.sqrt((un / A) ** 2 + (vn / Bv) ** 2) / np.maximum(rho, 1e-6)
        self.rho = rho.astype(np.float32)
        self.g = (1.0 / np.maximum(grad, 1e-6)).astype(np.float32)
        nu, nv = un / np.maximum(rho, 1e-6), vn / np.maximum(rho, 1e-6)
        P, Q = np.maximum(nv, 0), np.maximum(-nv, 0)
        self.P2 = (P ** 2).astype(np.float32)
        self.NU2 = (nu ** 2).astype(np.float32)
        theta = np.arctan2(nu, nv)
        tfat = self.fat0 * (0.85 + 0.3 * np.abs(nu) + (0.35 * Q if self.female else 0.1 * Q)) * (1 + 0.12 * np.cos(2 * theta + self.k_phase))
        tmus = self.mus0 * (1 + 0.5 * Q ** 2 + 0.6 * P ** 2) + 28 * s * np.exp(-(UU / (38 * s)) ** 2) * P ** 2
        self.TF1 = tfat.astype(np.float32)
        self.TF2 = (tfat + tmus).astype(np.float32)
        self.TF3 = (self.TF2 + self.trib).astype(np.float32)
        self.absU = np.abs(UU).astype(np.float32)
        self.sideU = np.where(UU < 0, 1, 2).astype(np.uint8) + np.zeros_like(VV, dtype=np.uint8)
        sig = np.where(UU < 0, -1.0, 1.0).astype(np.float32)
        # ribs
        thp = np.arctan2(np.abs(nu), nv)  # 0 posterior .. pi anterior
        self.rib_dz = (self.rib_drop * (thp / np.pi) ** 1.3).astype(np.float32)
        self.rib_ok = (~((self.absU < self.Wst + 2 * s) & (VV < 0)) & ~((self.absU < self.Rv + 6 * s) & (VV > 0)))
        self.rib_cart = thp > 0.80 * np.pi
        # diaphragm and apex caps
        Bc = 0.5 * (self.Bca + self.Bcp)
        D = np.empty((self.n, self.n), np.float32)
        qa = np.empty((self.n, self.n), np.float32)
        for side, m in ((1, UU < 0), (2, UU >= 0)):
            su = sig * UU
            wd = self.w_dome[side]
            # broad, flat-topped domes (inspiration): wide iso-height contours, steep toward the
            # recesses (q ** 1.6), so that the dome's apex is not a small island in the lung
            q = ((su - 0.45 * self.Ac) / (0.8 * self.Ac)) ** 2 + ((VV + 0.15 * Bc) / (1.05 * Bc)) ** 2
            q = q + 0.5 * np.clip(VV / (0.95 * Bc), 0, 1) ** 2
            d = np.maximum(wd - (wd - self.w_base) * q ** 1.6, self.w_base)
            qq = ((su - 0.5 * self.Ac) / (0.56 * self.Ac)) ** 2 + ((VV - 0.1 * Bc) / (1.0 * Bc)) ** 2
            mm = np.broadcast_to(m, D.shape)
            D[mm] = np.broadcast_to(d, D.shape)[mm]
            qa[mm] = np.broadcast_to(qq, D.shape)[mm]
        self.D = D
        self.qa = qa
        self.t_dia = 3.0 * s
        self.liver = (UU < 12 * s - 0.35 * VV) & np.ones_like(VV, bool)
        self.breast_shape = (np.exp(-((self.absU - 0.42 * A) / (0.2 * A)) ** 2) * Q ** 2).astype(np.float32)
        thp_ = np.arctan2(np.abs(nu), nv)
        self.thp = thp_.astype(np.float32)
        # table
        curv = 0.12 * self.B_post / self.A ** 2
        vt = self.B_post * self.kmax + self.gap - curv * UU ** 2
        self.table = (VV >= vt) & (VV < vt + self.t_table) & (self.absU < 1.35 * self.A)
        self.behind_table = VV >= vt - self.gap
        # spine
        r_vb = np.hypot(UU, VV - self.v_vb)
        r_cn = np.hypot(UU, VV - self.v_cn)
        cort = max(1.5 * s, 0.6 * self.sp)
        self.vb = r_vb < self.Rv
        self.vb_marrow = r_vb < self.Rv - cort
        self.canal = r_cn < self.Rc
        ta = 5 * s
        arch = (r_cn >= self.Rc) & (r_cn < self.Rc + ta) & (VV > self.v_cn - 0.2 * self.Rc)
        pedicle = (self.absU > 0.55 * self.Rc) & (self.absU < self.Rc + ta) & (VV > self.v_vb) & (VV < self.v_cn)
        self.arch = (arch | pedicle) & ~self.canal & ~self.vb
        self.spinous = (self.absU < 3.0 * s) & (VV >= self.v_cn + self.Rc) & (VV < self.v_cn + self.Rc + 22 * s)
        self.transverse = ((np.abs(VV - self.v_cn + 1 * s - 0.45 * (self.absU - self.Rc)) < 3.5 * s)
                           & (self.absU >= self.Rc) & (self.absU < self.Rc + 20 * s))
        self.spine_col = (r_vb < self.Rv + 4 * s) | ((self.absU < self.Rv + 5 * s) & (VV > self.v_vb))
        # vertical tubes
        self.r_aa = np.hypot(UU - self.u_aa, VV - self.v_aa).astype(np.float32)
        self.r_es = np.hypot(UU - self.u_es, VV - self.v_es).astype(np.float32)
        self.r_tr = np.hypot(UU - self.u_tr, VV - self.v_tr).astype(np.float32)
        # descending aorta: left of the spine below the arch, moving medially onto the front of
        # the vertebral bodies toward the aortic hiatus (a few precomputed positions).  Para-aortic
        # fat fills the convex hull of the aorta (with its sleeve), the oesophagus and the
        # vertebral body, so that the left lung passes smoothly over the aorta to the spine
        # instead of dipping into deep notches in front of and behind it.
        self.da_levels = []
        for t in np.linspace(0.0, 1.0, 8):
            cu = (1 - t) * self.u_da + t * 0.45 * self.Rv
            cv = (1 - t) * self.v_da + t * (self.v_vb - self.Rv + 0.2 * self.R_da)
            r_da = np.hypot(UU - cu, VV - cv).astype(np.float32)
            union = (r_da < self.R_da + 2.5 * s) | (self.r_es < self.R_es) | (np.hypot(UU, VV - self.v_vb) < self.Rv + 4 * s)
            hull = convex_hull_image(union) & (UU > 0)  # left side only
            self.da_levels.append((r_da, hull))
        # mediastinal widening (superior mediastinum, anterior)
        self.med_ant = (12 * s * np.clip(-self.V1 / (40 * s), 0, 1)).astype(np.float32)
        self.med_w = (self.m0 * (0.72 + 0.38 * np.exp(-((self.V1 - self.v_tr) / (35 * s)) ** 2))).astype(np.float32)
        # gravity gradient in the lungs
        vn_l = np.clip((self.V1 + self.Bca) / (self.Bca + self.Bcp), 0, 1)
        self.grav = (self.g_amp * vn_l ** 2.5).astype(np.float32)

    def _walls(self, w):
        """Inner boundaries of the muscle layer and of the rib cage at height w (2-D).

        Toward the top the rib cage narrows laterally (shoulders / axillae)."""
        lo = self.w_car - 0.1 * self.H_lung
        ex = 0.28 * self.Ac * float(_smoothstep((w - lo) / (self.w_apex + 0.05 * self.H_lung - lo)))
        if ex <= 0:
            return self.TF2, self.TF3
        extra = np.float32(ex) * self.NU2
        return self.TF2 + extra, self.TF3 + extra

    # ------------------------------------------------------------------ slice-wise anatomy
    def render_anatomy(self):
        n, s = self.n, self.s
        self.cls = np.zeros((self.nzf, n, n), np.uint8)
        self.side = np.zeros((self.nzf, n, n), np.uint8)
        kw = self._kfun(self.Wf)
        br = self.breasts
        for kf in range(self.nzf):
            w = float(self.Wf[kf])
            c = self.cls[kf]
            sd = self.side[kf]
            ke = np.float32(kw[kf]) + np.float32(self.kmax - kw[kf]) * self.P2
            d = (self.rho - ke) * self.g
            d[self.behind_table] = 1.0
            TF2, TF3 = self._walls(w)
            c[self.table] = TABLE
            c[d < 0] = FAT
            if br is not None and abs(w - br["w"]) < 2.5 * br["wz"]:
                # breasts: the anterior skin surface displaced outward (fat with glandular tissue)
                hb = br["h"] * math.exp(-((w - br["w"]) / br["wz"]) ** 2)
                bump = np.float32(hb) * self.breast_shape
                bm = (d < bump) & (d > -self.TF1)
                c[bm & (d >= 0)] = FAT
                c[bm & (self.breast_shape > 0.45) & (d < 0.5 * bump) & (d > -0.5 * self.TF1)] = GLAND
            c[d < -self.TF1] = MUSCLE
            cav = d < -TF3
            c[cav] = MEDIAST
            below = w < self.D
            abd = cav & (w < self.D - self.t_dia)
            c[abd & self.liver] = LIVER
            c[abd & ~self.liver] = ABD
            c[cav & below & ~abd] = MUSCLE
            zf = float(_smoothstep((w - (self.w_car - 40 * s)) / (30 * s)))
            medi = self.absU < (self.med_w * (1 + 0.05 * math.sin(w / (30 * s) + self.k_phase)) + zf * self.med_ant)[:, None]
            lung = cav & ~below & ~medi & ~self.spine_col
            if w > self.w_top:
                lim = 1 - ((w - self.w_top) / self.h_cap) ** 2
                lung &= self.qa < lim
            c[lung] = LUNG
            sd[lung] = self.sideU[lung]
            # ribs, costal cartilage
            band = (d >= -TF3) & (d < -TF2) & self.rib_ok
            jj, ii = np.nonzero(band)
            if jj.size:
                ir = (self.rib_top - self.rib_dz[jj, ii] - w) / self.rib_pitch
                irr = np.rint(ir)
                dz = (ir - irr) * self.rib_pitch / (0.5 * self.rib_h)
                rr = (d[jj, ii] + TF2[jj, ii] + 0.5 * self.trib) / (0.5 * self.trib)
                e2 = rr * rr + dz * dz
                ok = (e2 < 1) & (irr >= 0) & (irr < 12)
                cart = self.rib_cart[jj, ii]
                jo, io = jj[ok], ii[ok]
                c[jo, io] = np.where(cart[ok], CART, np.where(e2[ok] > 0.45, CORTEX, MARROW))
            # sternum
            if self.w_st[0] < w < self.w_st[1]:
                dc = -TF2 - 0.5 * self.trib + 2 * s
                hs = 0.5 * self.trib + 3 * s
                st = (self.absU < self.Wst) & (self.V1[:, None] < 0) & (np.abs(d - dc) < hs)
                e = np.maximum(self.absU / self.Wst, np.abs(d - dc) / hs)
                c[st] = np.where(e[st] > 0.72, CORTEX, MARROW)
            # paravertebral column, vertical tubes
            c[self.spine_col & cav] = MEDIAST
            sd[self.spine_col] = 0
            if w < self.w_arch:
                t = float(_smoothstep((self.w_arch - w) / max(self.w_arch - self.w_base, 1e-6)))
                r_da, hull = self.da_levels[int(round(t * (len(self.da_levels) - 1)))]
                sl = hull & cav & (sd > 0)
                c[sl] = MEDFAT
                sd[sl] = 0
                sl = (r_da < self.R_da + 2.5 * s) & cav
                c[sl] = MEDFAT
                sd[sl] = 0
                c[(r_da < self.R_da) & cav] = AORTA
            if self.w_aa0 < w < self.w_arch:
                sl = (self.r_aa < self.R_aa + 2.5 * s) & cav
                c[sl] = MEDFAT
                sd[sl] = 0
                c[(self.r_aa < self.R_aa) & cav] = AORTA
            if w > self.w_dome[2] - 15 * s:
                es = (self.r_es < self.R_es) & cav
                c[es] = MEDIAST
                sd[es] = 0
                if self.es_air:
                    c[(self.r_es < 0.3 * self.R_es) & cav] = AIR_TR
            if w > self.w_car - self.R_tr:
                dw = max(self.w_car - w, 0.0)
                rl = math.sqrt(max(self.R_tr ** 2 - dw ** 2, 0.0))
                wall = self.r_tr < rl + self.tw
                c[wall] = WALL
                sd[wall] = 0
                c[self.r_tr < rl] = AIR_TR
            # spine
            lp = ((w - self.v_phase) % self.Pv) / self.Pv
            if lp > 0.82:
                c[self.vb] = DISC
            else:
                c[self.vb] = CORTEX
                c[self.vb_marrow] = MARROW
            inner = d < -self.TF1
            if 0.05 < lp < 0.8:
                c[self.arch & inner] = BONE
            if 0.3 < lp < 0.95:
                c[self.spinous & inner] = BONE
            if 0.25 < lp < 0.6:
                c[self.transverse & inner] = BONE
            c[self.canal] = CANAL
            # scapulae: thin plates in the posterolateral muscle layer of the upper thorax
            if self.w_scap[0] < w < self.w_scap[1]:
                fz = (w - self.w_scap[0]) / (self.w_scap[1] - self.w_scap[0])
                th0, th1 = 0.22 * np.pi, (0.30 + 0.22 * min(fz * 2.5, 1.0)) * np.pi
                mid = -(self.TF1 + 0.45 * (self.TF2 - self.TF1))
                sc = (np.abs(d - mid) < self.t_scap) & (self.thp > th0) & (self.thp < th1)
                c[sc] = BONE

    # ------------------------------------------------------------------ local (bbox) objects
    def _box(self, lo, hi):
        """Fine-grid slices and body coordinates of the box [lo, hi] (u, v, w)."""
        i0 = max(int(math.floor((lo[0] - self.U1[0]) / self.sp)), 0)
        i1 = min(int(math.ceil((hi[0] - self.U1[0]) / self.sp)) + 1, self.n)
        j0 = max(int(math.floor((lo[1] - self.V1[0]) / self.sp)), 0)
        j1 = min(int(math.ceil((hi[1] - self.V1[0]) / self.sp)) + 1, self.n)
        k0 = max(int(math.floor((lo[2] - self.Wf[0]) / self.dzf)), 0)
        k1 = min(int(math.ceil((hi[2] - self.Wf[0]) / self.dzf)) + 1, self.nzf)
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        sl = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
        return sl, self.Wf[k0:k1, None, None], self.V1[None, j0:j1, None], self.U1[None, None, i0:i1]

    def _seg_box(self, a, b, r):
        a, b = np.asarray(a, float), np.asarray(b, float)
        lo = np.minimum(a, b) - r - 1.5 * max(self.sp, self.dzf)
        hi = np.maximum(a, b) + r + 1.5 * max(self.sp, self.dzf)
        return self._box(lo, hi)

    @staticmethod
    def _seg_dist(W, V, U, a, b):
        """Distance to segment a-b and the unclamped projection parameter t."""
        d = (b - a).astype(np.float32)
        L2 = float(d.dot(d)) or 1e-9
        du, dv, dw = U - np.float32(a[0]), V - np.float32(a[1]), W - np.float32(a[2])
        t = (du * d[0] + dv * d[1] + dw * d[2]) / np.float32(L2)
        tc = np.clip(t, 0, 1)
        dist = np.sqrt((du - tc * d[0]) ** 2 + (dv - tc * d[1]) ** 2 + (dw - tc * d[2]) ** 2)
        return dist, t

    def _paint_tube(self, a, b, r, cls_in, sleeve=0.0, cls_sleeve=None, allowed=(MEDIAST, LUNG, MEDFAT)):
        box = self._seg_box(a, b, r + sleeve)
        if box is None:
            return
        sl, W, V, U = box
        dist, _ = self._seg_dist(W, V, U, np.asarray(a, float), np.asarray(b, float))
        c, sd = self.cls[sl], self.side[sl]
        ok = np.isin(c, allowed)
        if sleeve > 0:
            m = ok & (dist < r + sleeve)
            c[m] = cls_sleeve
            sd[m] = 0
        m = ok & (dist < r)
        c[m] = cls_in
        sd[m] = 0

    def paint_mediastinum(self):
        s, h = self.s, self.heart
        a = h["a"]
        shell = max(3 * s, 0.8 * self.sp)
        ext = a.max() + shell
        # The heart rests on the diaphragm: below its equator its cross-section stays that of
        # the equator down to the diaphragm (flat diaphragmatic surface, no lung under the
        # heart); above it the profile is a flattened (4th power) ellipsoid toward the base.
        box = self._box(np.array([h["u"] - ext, h["v"] - ext, self.w_base - shell]),
                        np.array([h["u"] + ext, h["v"] + ext, h["w"] + a[2] + shell]))
        if box is not None:
            sl, W, V, U = box
            cb, sb = math.cos(h["beta"]), math.sin(h["beta"])
            du, dv, dw = U - h["u"], V - h["v"], W - h["w"]
            pa = du * cb - dv * sb
            pb = du * sb + dv * cb
            c, sd = self.cls[sl], self.side[sl]
            ok = np.isin(c, (MEDIAST, LUNG, MEDFAT))
            up = np.maximum(dw, 0)
            q_shell = (pa / (a[0] + shell)) ** 2 + (pb / (a[1] + shell)) ** 2 + (up / (a[2] + shell)) ** 4
            q = (pa / a[0]) ** 2 + (pb / a[1]) ** 2 + (up / a[2]) ** 4
            m = ok & (q_shell < 1)
            c[m] = MEDFAT
            sd[m] = 0
            c[ok & (q < 1)] = HEART
        # aortic arch: quadratic Bezier from ascending to descending aorta, bulging left and up
        p0 = np.array([self.u_aa, self.v_aa, self.w_arch])
        p2 = np.array([self.u_da, self.v_da, self.w_arch])
        cp = np.array([35 * s, 0.0, self.w_arch + 30 * s])
        ts = np.linspace(0, 1, 11)
        pts = [(1 - t) ** 2 * p0 + 2 * t * (1 - t) * cp + t ** 2 * p2 for t in ts]
        for q0, q1 in zip(pts[:-1], pts[1:]):
            self._paint_tube(q0, q1, 0.5 * (self.R_aa + self.R_da), AORTA, 2.5 * s, MEDFAT)
        # pulmonary arteries
        pa0 = np.array([6 * s, -self.Bca + 32 * s, h["w"] + 0.6 * a[2]])
        pb_ = np.array([4 * s, self.v_tr - 20 * s, self.w_car - 12 * s])
        self._paint_tube(pa0, pb_, 11 * s, HEART)
        self.pa_end = {}
        for side, sg, dv, dw in ((1, -1, -10 * s, 8 * s), (2, 1, -4 * s, 14 * s)):
            hil = self.hilum[side]
            t = np.array([sg * (self.m0 + 3 * s), hil[1] + dv, hil[2] + dw])
            self._paint_tube(pb_, t, 8.5 * s, HEART)
            self.pa_end[side] = t
        # gastric air bubble
        if self.gas_bubble:
            c0 = np.array([0.45 * self.Ac, -0.2 * self.Bca, self.w_dome[2] - 14 * s])
            r = np.array([14, 10, 9]) * s
            box = self._box(c0 - r, c0 + r)
            if box is not None:
                sl, W, V, U = box
                q = ((U - c0[0]) / r[0]) ** 2 + ((V - c0[1]) / r[1]) ** 2 + ((W - c0[2]) / r[2]) ** 2
                cc = self.cls[sl]
                cc[(q < 1) & (cc == ABD)] = GAS
        # main bronchi: mediastinal part forced out of the lung, open end inside the lung
        for side in (1, 2):
            self._paint_airway(self.carina, self.hilum[side], self.r_b[side], main=True)
        # lobar bronchi
        for side, sg in ((1, -1.0), (2, 1.0)):
            hil = self.hilum[side]
            rb = self.r_b[side]
            for d, L, rf in (((sg * 0.5, 0.0, 0.87), 22, 0.6), ((sg * 0.45, 0.35, -0.82), 28, 0.65), ((sg * 0.7, -0.6, -0.3), 18, 0.5)):
                self._paint_airway(hil, hil + _unit(d) * L * self.s, rf * rb, main=False)

    def _paint_airway(self, a, b, r, main):
        tw = self.tw
        box = self._seg_box(a, b, r + tw)
        if box is None:
            return
        sl, W, V, U = box
        a, b = np.asarray(a, float), np.asarray(b, float)
        dist, t = self._seg_dist(W, V, U, a, b)
        # distance to the infinite line for the (open-ended) wall
        d = (b - a).astype(np.float32)
        du, dv, dw = U - np.float32(a[0]), V - np.float32(a[1]), W - np.float32(a[2])
        dline = np.sqrt(np.maximum((du - t * d[0]) ** 2 + (dv - t * d[1]) ** 2 + (dw - t * d[2]) ** 2, 0))
        c, sd = self.cls[sl], self.side[sl]
        lumen = dist < r
        wall = (dline < r + tw) & (t > 0) & (t < 1) & ~lumen & (c != AIR_TR) & (c != AIR_IN)
        if main:
            # mediastinal portion: up to where the tube crosses the mediastinal boundary
            ua, ub = abs(a[0]), abs(b[0])
            t_entry = float(np.clip((self.m0 + 1.0 * self.s - ua) / max(ub - ua, 1e-6), 0, 1))
            med = (t < t_entry) & (lumen | wall)
            sd[med] = 0
        inlung = sd > 0
        c[wall & inlung] = WALL_IN
        c[wall & ~inlung] = WALL
        c[lumen & inlung] = AIR_IN
        c[lumen & ~inlung] = AIR_TR

    # ------------------------------------------------------------------ coarse lung map
    def clean_lungs(self):
        """Keep the largest connected component of each lung (slivers cut off by mediastinal
        structures become mediastinal soft tissue)."""
        zs = np.flatnonzero(self.side.any(axis=(1, 2)))
        if zs.size == 0:
            return
        ys = np.flatnonzero(self.side[zs[0]:zs[-1] + 1].any(axis=(0, 2)))
        xs = np.flatnonzero(self.side[zs[0]:zs[-1] + 1, ys[0]:ys[-1] + 1].any(axis=(0, 1)))
        box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        sd = self.side[box]
        lab, n = ndi.label(sd > 0)
        if n <= 2:
            return
        sizes = np.bincount(lab.ravel())
        side_of = np.rint(np.bincount(lab.ravel(), weights=sd.ravel()) / np.maximum(sizes, 1)).astype(int)
        sizes[0] = 0
        keep = [int(np.argmax(np.where(side_of == k, sizes, 0))) for k in (1, 2)]
        drop = (lab > 0) & ~np.isin(lab, keep)
        sd[drop] = 0
        c = self.cls[box]
        c[drop & (c == LUNG)] = MEDIAST

    def coarse(self):
        s = self.s
        c = max(2.0, 3.0 * s)
        self.kxs = max(1, int(round(c / self.sp)))
        self.kzs = max(1, int(round(c / self.dzf)))
        self.side_c = np.ascontiguousarray(self.side[::self.kzs, ::self.kxs, ::self.kxs])
        self.Wc, self.Vc, self.Uc = self.Wf[::self.kzs], self.V1[::self.kxs], self.U1[::self.kxs]
        self.dwc, self.dvc = self.dzf * self.kzs, self.sp * self.kxs
        self.cmax = max(self.dwc, self.dvc)
        self.depth_c = ndi.distance_transform_edt(self.side_c > 0, sampling=(self.dwc, self.dvc, self.dvc)).astype(np.float32)
        self.vox_c = self.dwc * self.dvc * self.dvc
        self.V_lung = {sd: float(np.count_nonzero(self.side_c == sd)) * self.vox_c for sd in (1, 2)}

    def _cidx(self, p):
        a = int(round((p[2] - self.Wc[0]) / self.dwc))
        b = int(round((p[1] - self.Vc[0]) / self.dvc))
        c = int(round((p[0] - self.Uc[0]) / self.dvc))
        sh = self.side_c.shape
        if 0 <= a < sh[0] and 0 <= b < sh[1] and 0 <= c < sh[2]:
            return a, b, c
        return None

    def _side_at(self, p) -> int:
        idx = self._cidx(p)
        return 0 if idx is None else int(self.side_c[idx])

    def _cpos(self, a, b, c):
        return np.array([self.Uc[c], self.Vc[b], self.Wc[a]], float)

    def _grad_depth(self, a, b, c):
        dc = self.depth_c
        sh = dc.shape
        g = np.zeros(3)
        for ax, h in enumerate((self.dvc, self.dvc, self.dwc)):
            idx_p = [a, b, c]
            idx_m = [a, b, c]
            k = 2 - ax
            idx_p[k] = min(idx_p[k] + 1, sh[k] - 1)
            idx_m[k] = max(idx_m[k] - 1, 0)
            span = (idx_p[k] - idx_m[k]) * h
            g[ax] = (dc[tuple(idx_p)] - dc[tuple(idx_m)]) / span if span > 0 else 0.0
        return g

    # ------------------------------------------------------------------ intensities
    def intensities(self):
        rng = self.rng
        hu = _HU.copy()
        hu[LUNG] = self.lung_hu
        hu[MARROW] = self.marrow_hu
        corr = max(3.0, 8.0 * self.s)
        wz, X = _smooth_field_parts(rng, (self.nzf, self.n, self.n), (self.dzf, self.sp, self.sp), corr)
        self.img = np.empty((self.nzf, self.n, self.n), np.float32)
        step = max(1, int(4_000_000 // (self.n * self.n)))
        grav = self.grav[:, None]
        for k0 in range(0, self.nzf, step):
            k1 = min(k0 + step, self.nzf)
            c = self.cls[k0:k1]
            out = self.img[k0:k1]
            np.take(hu, c, out=out)
            tex = np.asarray(wz[k0:k1] @ X, dtype=np.float32).reshape(c.shape)
            tex *= _TEX[c]
            out += tex
            out += np.where(c == LUNG, grav, np.float32(0))

    # ------------------------------------------------------------------ vessel trees
    def vessels(self):
        """Artery and vein trees per lung (space colonisation), radii by the pipe law."""
        rng, s = self.rng, self.s
        r_min = max(0.9 * s, 0.4)
        pts, rads = [], []
        for side, sg in ((1, -1.0), (2, 1.0)):
            hil = self.hilum[side]
            art_root = self.pa_end[side] + np.array([sg * 5 * s, 0, 0])
            vein_root = np.array([sg * (self.m0 + 6 * s), self.v_hil + 8 * s, hil[2] - 25 * s])
            for root, r0 in ((art_root, 5.0 * s), (vein_root, 5.5 * s)):
                root = self._find_in_lung(root, side, np.array([sg, 0.0, 0.0]))
                if root is None:
                    continue
                nodes, parent = self._colonise(root, side)
                if len(nodes) < 2:
                    continue
                # pipe law: r ~ (number of leaves below) ** (1 / 2.7), rescaled to [r_min, r0]
                n = len(nodes)
                leaves = np.ones(n)
                has_child = np.zeros(n, bool)
                has_child[parent[1:]] = True
                leaves[has_child] = 0
                for i in range(n - 1, 0, -1):  # children are appended after their parents
                    leaves[parent[i]] += leaves[i]
                g = leaves ** (1 / 2.7)
                r0 *= rng.uniform(0.85, 1.1)
                rad = r_min + (r0 - r_min) * (g - 1) / max(g[0] - 1, 1e-6)
                a, b = nodes[parent[1:]], nodes[1:]
                p_, r_ = self._sample_segments(a, b, rad[1:])
                pts.append(p_)
                rads.append(r_)
        if pts:
            self._splat_vessels(np.concatenate(pts), np.concatenate(rads))

    def _find_in_lung(self, p, side, direction):
        for k in range(12):
            q = p + direction * k * 2.0 * self.s
            if self._side_at(q) == side:
                return q
        return None

    def _colonise(self, root, side):
        """Open space colonisation (Runions et al. 2007) toward attractors sampled in the lung."""
        from scipy.spatial import cKDTree

        rng, s = self.rng, self.s
        idx = np.flatnonzero(self.side_c == side)
        if idx.size == 0:
            return np.array([root]), np.array([-1])
        n_attr = 700
        pick = rng.choice(idx, size=n_attr, replace=idx.size < n_attr)
        a, b, c = np.unravel_index(pick, self.side_c.shape)
        A = np.stack([self.Uc[c], self.Vc[b], self.Wc[a]], 1).astype(float)
        A += rng.uniform(-0.5, 0.5, A.shape) * np.array([self.dvc, self.dvc, self.dwc])
        D = max(3.0 * s, 1.2)  # growth step (mm)
        kill = 2.5 * D
        cap = 20000
        nodes = np.empty((cap, 3))
        parent = np.empty(cap, np.int64)
        nodes[0], parent[0], nn = root, -1, 1
        sh = np.array(self.side_c.shape)
        for _ in range(400):
            arr = nodes[:nn]
            tree = cKDTree(arr)
            dist, near = tree.query(A)
            alive = dist > kill
            A, near = A[alive], near[alive]
            if len(A) == 0:
                break
            vec = A - arr[near]
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            acc = np.zeros_like(arr)
            np.add.at(acc, near, vec)
            grow = np.unique(near)
            dirs = acc[grow] + 0.25 * rng.standard_normal((grow.size, 3))
            dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-9)
            new = arr[grow] + D * dirs
            dmin, _ = tree.query(new)
            ci = np.rint(np.stack([(new[:, 2] - self.Wc[0]) / self.dwc, (new[:, 1] - self.Vc[0]) / self.dvc,
                                   (new[:, 0] - self.Uc[0]) / self.dvc], 1)).astype(np.int64)
            inb = np.all((ci >= 0) & (ci < sh), axis=1)
            ok = (dmin >= 0.6 * D) & inb
            ok[ok] = self.side_c[ci[ok, 0], ci[ok, 1], ci[ok, 2]] == side
            k = int(ok.sum())
            if k == 0 or nn + k > cap:
                break
            nodes[nn:nn + k] = new[ok]
            parent[nn:nn + k] = grow[ok]
            nn += k
        return nodes[:nn].copy(), parent[:nn].copy()

    def _sample_segments(self, a, b, r):
        """Points along segments a->b, spaced at most half a radius / half a voxel."""
        L = np.linalg.norm(b - a, axis=1)
        h = 0.5 * np.minimum(np.minimum(r, self.sp), self.dzf)
        n = np.maximum(np.ceil(L / h).astype(int), 1) + 1
        seg = np.repeat(np.arange(len(a)), n)
        start = np.repeat(np.cumsum(n) - n, n)
        t = (np.arange(seg.size) - start) / np.repeat(n - 1, n)
        pts = a[seg] + t[:, None] * (b[seg] - a[seg])
        return pts, r[seg]

    def _splat_vessels(self, pts, rad):
        """Union of partial-volume spheres (a tube when the spheres are dense) -> max coverage."""
        sp, dz = self.sp, self.dzf
        shape = (self.nzf, self.n, self.n)
        fi = (pts[:, 0] - self.U1[0]) / sp
        fj = (pts[:, 1] - self.V1[0]) / sp
        fk = (pts[:, 2] - self.Wf[0]) / dz
        ci, cj, ck = np.rint(fi).astype(np.int64), np.rint(fj).astype(np.int64), np.rint(fk).astype(np.int64)
        hx = np.ceil((rad + 0.5 * sp) / sp - 0.5).astype(int)
        hz = np.ceil((rad + 0.5 * sp) / dz - 0.5).astype(int)
        buf = np.zeros(shape, np.uint8).reshape(-1)
        for key in np.unique(np.stack([hx, hz], 1), axis=0):
            sel = np.flatnonzero((hx == key[0]) & (hz == key[1]))
            ox = np.arange(-key[0], key[0] + 1)
            oz = np.arange(-key[1], key[1] + 1)
            OZ, OY, OX = np.meshgrid(oz, ox, ox, indexing="ij")
            OZ, OY, OX = OZ.ravel(), OY.ravel(), OX.ravel()
            for chunk in np.array_split(sel, max(1, sel.size * OZ.size // 2_000_000 + 1)):
                kk = ck[chunk, None] + OZ[None]
                jj = cj[chunk, None] + OY[None]
                ii = ci[chunk, None] + OX[None]
                dist = np.sqrt(((ii - fi[chunk, None]) * sp) ** 2 + ((jj - fj[chunk, None]) * sp) ** 2 + ((kk - fk[chunk, None]) * dz) ** 2)
                cov = np.clip((rad[chunk, None] - dist) / sp + 0.5, 0, 1)
                ok = (cov > 0) & (kk >= 0) & (kk < shape[0]) & (jj >= 0) & (jj < shape[1]) & (ii >= 0) & (ii < shape[2])
                np.maximum.at(buf, np.ravel_multi_index((kk[ok], jj[ok], ii[ok]), shape),
                              np.rint(cov[ok] * 255).astype(np.uint8))
        idx = np.flatnonzero(buf)
        val = buf[idx].astype(np.float32) / np.float32(255)
        del buf
        side = self.side.reshape(-1)[idx]
        cl = self.cls.reshape(-1)[idx]
        ok = (side > 0) & (cl != AIR_IN)
        idx, val = idx[ok], val[ok]
        flat = self.img.reshape(-1)
        flat[idx] += val * (np.float32(_VESSEL_HU) - flat[idx])

    # ------------------------------------------------------------------ lesions
    def plan_lesions(self):
        rng = self.rng
        plans = []
        if self.diag == "normal":
            return plans
        Vtot = self.V_lung[1] + self.V_lung[2]
        if Vtot <= 0:
            return plans
        pleft = self.V_lung[2] / Vtot
        if self.diag == "covid19":
            morb = self.morb if self.morb in _COVID else "suspected"
            if morb == "suspected":
                morb = _SUSPECTED_AS[0] if rng.random() < _SUSPECTED_P_MILD else _SUSPECTED_AS[1]
            (n_lo, n_hi), (f_lo, f_hi), pk, n_dense, p_sub, n_confluent = _COVID[morb]
            n = int(rng.integers(n_lo, n_hi + 1))
            frac = rng.uniform(f_lo, f_hi)
            rel = rng.lognormal(0.0, 0.7, n)
            vols = np.sort(frac * Vtot * rel / rel.sum())[::-1]
            side = 2 if rng.random() < pleft else 1
            n_dense_done = 0
            n_conf_done = 0
            carry = 0.0  # volume taken off capped confluent consolidations, given to the next lesions
            for i in range(n):
                if i > 0:
                    if rng.random() < 0.65:
                        side = 3 - side
                    else:
                        side = 2 if rng.random() < pleft else 1
                kind = _KINDS[int(rng.choice(3, p=pk))]
                sub = rng.random() < p_sub
                dense_ggo = False
                if n_dense_done < n_dense:
                    sub = True
                    if morb == "mild" and n_dense_done == 1:
                        if kind == "ggo":
                            dense_ggo = True
                    elif kind == "ggo":
                        kind = "mixed"
                    n_dense_done += 1
                vol = float(vols[i]) + carry
                carry = 0.0
                # form: how the dense part is laid out (see the module docstring)
                if kind == "ggo":
                    form = "patch"
                elif kind == "mixed":
                    form = "foci_in_patch" if sub else "core"
                elif not sub:
                    form = "solid"
                elif n_conf_done < n_confluent and rng.random() < 0.6:
                    form = "solid"  # a (rarer) confluent subpleural consolidation, capped in size
                    n_conf_done += 1
                    cap = Vtot * rng.uniform(0.006, 0.012)
                    carry, vol = max(vol - cap, 0.0), min(vol, cap)
                else:
                    form = "cluster"
                plans.append(self._lesion_hu(dict(kind=kind, form=form, side=side, volume=vol, subpleural=sub,
                                                  dense_ggo=dense_ggo, disease="covid19")))
        else:  # cap
            n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
            frac = rng.uniform(0.03, 0.08)
            rel = rng.lognormal(0.0, 0.35, n)
            vols = np.sort(frac * Vtot * rel / rel.sum())[::-1]
            unilateral = rng.random() < 0.7
            side0 = 1 if rng.random() < 0.6 else 2
            for i in range(n):
                side = side0 if (unilateral or i == 0) else (2 if rng.random() < pleft else 1)
                kind = _KINDS[int(rng.choice(3, p=[0.1, 0.4, 0.5]))]
                form = {"ggo": "patch", "mixed": "core", "consolidation": "solid"}[kind]
                plans.append(self._lesion_hu(dict(kind=kind, form=form, side=side, volume=float(vols[i]), subpleural=False,
                                                  dense_ggo=False, disease="cap")))
        return plans

    def _lesion_hu(self, pl):
        rng = self.rng
        covid = pl["disease"] == "covid19"
        if pl["dense_ggo"]:
            g = rng.uniform(-400, -350)
        else:
            g = float(np.clip(rng.normal(-570 if covid else -560, 60), -680, -420))
        cons = rng.uniform(-120, 30) if covid else rng.uniform(-40, 40)
        pl["T_ggo"], pl["T_cons"] = g, cons
        # mixed: consolidated core = inner (1 - f_core) of the radius (CAP: mostly consolidated)
        pl["f_core"] = rng.uniform(0.3, 0.55) if covid else rng.uniform(0.12, 0.3)
        pl["edge_mm"] = max(1.2, 2.0 * self.s) * rng.uniform(0.7, 1.3) * (1.0 if pl["kind"] == "ggo" else 0.6)
        pl["tex_amp"] = rng.uniform(30, 60) if pl["kind"] == "ggo" else rng.uniform(15, 30)
        pl["deform"] = rng.uniform(0.15, 0.3) if covid else rng.uniform(0.2, 0.35)
        if pl["form"] == "foci_in_patch":
            pl["f_dense"] = rng.uniform(0.2, 0.35)  # planned dense (nodule) share of the lesion volume
        elif pl["form"] == "cluster":
            pl["f_dense"] = 1.0
        return pl

    def paint_lesions(self, plans):
        self.les_f = np.zeros((self.nzf, self.n, self.n), np.uint8)
        vox_f = self.sp * self.sp * self.dzf
        self.planned = []
        deficit = 0.0
        # candidate sites
        Wc, Vc = self.Wc[:, None, None], self.Vc[None, :, None]
        ks = self.kxs
        rho_c, g_c, p2_c = self.rho[::ks, ::ks], self.g[::ks, ::ks], self.P2[::ks, ::ks]
        d_cav = np.empty(self.side_c.shape, np.float32)  # signed distance to the inner chest wall (<0 inside)
        for a, w in enumerate(self.Wc):
            k = float(self._kfun(float(w)))
            d_cav[a] = (rho_c - (k + (self.kmax - k) * p2_c)) * g_c + self._walls(float(w))[1][::ks, ::ks]
        dia = Wc - self.D[::self.kxs, ::self.kxs][None]
        near_wall = (d_cav > -2.5 * self.cmax) | (dia < 2.5 * self.cmax)
        boundary = (self.depth_c <= 1.5 * self.cmax) & near_wall
        vn = np.clip(Vc / max(self.Bcp, 1e-3), -1, 1)
        wn = np.clip((Wc - self.w_base) / self.H_lung, 0, 1)
        pref = np.exp(1.2 * vn) * np.exp(-1.0 * wn)
        for lid, pl in enumerate(plans, start=1):
            if lid > 250:
                break
            side = pl["side"]
            target = pl["volume"] + 0.7 * deficit
            if pl["disease"] == "covid19":
                ok = self._place_covid(pl, side, boundary, pref, target)
            else:
                ok = self._place_cap(pl, side, target)
            if not ok:
                deficit += pl["volume"]
                continue
            got = self._rasterise_lesion(pl, lid, target / vox_f)
            deficit = max(target - got * vox_f, 0.0)
            pl["id"] = lid
            self.planned.append(pl)

    def _place_covid(self, pl, side, boundary, pref, target):
        rng, s = self.rng, self.s
        cand = boundary & (self.side_c == side)
        idx = np.flatnonzero(cand)
        if idx.size == 0:
            return False
        wts = pref.ravel()[idx] if pref.size == cand.size else np.broadcast_to(pref, cand.shape).ravel()[idx]
        pick = idx[int(rng.choice(idx.size, p=wts / wts.sum()))]
        a, b, c = np.unravel_index(pick, cand.shape)
        pc = self._cpos(a, b, c)
        g = self._grad_depth(a, b, c)
        n_out = -_unit(g) if np.linalg.norm(g) > 1e-6 else _unit(pc - np.array([0.0, 0.0, self.w_car]))
        wall = pc + n_out * max(self.depth_c[a, b, c] - 0.5 * self.cmax, 0.0)
        r1, r2 = rng.uniform(1.3, 2.2), rng.uniform(1.0, 1.6)
        v_ell = target * (2.0 if pl["subpleural"] else 1.0)
        if pl["form"] == "cluster":
            # the nodules of a cluster are spread over (part of) the pleural footprint of a
            # virtual thin patch larger than the lesion itself
            r1, r2 = r1 * 1.3, r2 * 1.3
            v_ell *= rng.uniform(1.5, 2.5)
        a_n = (3 * v_ell / (4 * math.pi * r1 * r2)) ** (1 / 3)
        e1 = -n_out
        e2 = _perp(e1, rng)
        e3 = np.cross(e1, e2)
        R = np.stack([e1, e2, e3])  # rows = local axes
        axes = np.array([a_n, a_n * r1, a_n * r2])
        if pl["subpleural"]:
            centre = wall - n_out * rng.uniform(0.0, 0.35) * a_n
        else:
            centre = wall - n_out * (1.5 * a_n + rng.uniform(2, 8) * s + self.cmax)
        parts = [(centre, R, axes)]
        for _ in range(int(rng.integers(0, 3))):  # irregular outline: 0-2 extra lobes along the pleura
            off = R.T @ (np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.9, 0.9), rng.uniform(-0.9, 0.9)]) * axes)
            parts.append((centre + off, R, axes * rng.uniform(0.5, 0.8, 3)))
        pl["parts"] = parts
        pl["centre"] = centre
        return True

    def _place_cap(self, pl, side, target):
        rng, s = self.rng, self.s
        nparts = int(rng.integers(2, 4))
        v_ell = target / (1.0 + 0.3 * (nparts - 1))
        ratios = np.array([0.85, 1.0, 1.5]) * rng.uniform(0.8, 1.2, 3)
        a0 = (3 * v_ell / (4 * math.pi * ratios.prod())) ** (1 / 3)
        hil = self.hilum[side]
        Wc, Vc, Uc = self.Wc[:, None, None], self.Vc[None, :, None], self.Uc[None, None, :]
        dh = np.sqrt((Uc - hil[0]) ** 2 + (Vc - hil[1]) ** 2 + (Wc - hil[2]) ** 2)
        scale = 1.0
        for _ in range(10):
            need = 1.15 * scale * a0 * max(ratios[0], ratios[1]) + self.cmax
            cand = (self.side_c == side) & (self.depth_c >= need)
            idx = np.flatnonzero(cand)
            if idx.size:
                break
            scale *= 0.85
        if idx.size == 0:
            cand = self.side_c == side
            idx = np.flatnonzero(cand)
            if idx.size == 0:
                return False
            idx = idx[np.argsort(self.depth_c.ravel()[idx])[-50:]]
        wts = np.exp(-dh.ravel()[idx] / (45 * s))
        pick = idx[int(rng.choice(idx.size, p=wts / wts.sum()))]
        a, b, c = np.unravel_index(pick, cand.shape)
        centre = self._cpos(a, b, c)
        axes0 = a0 * scale * ratios
        tilt = _rotate(np.array([0, 0, 1.0]), _perp(np.array([0, 0, 1.0]), rng), math.radians(rng.uniform(0, 25)))
        parts = []
        for k in range(nparts):
            R0 = np.stack([_unit(np.cross(tilt, [0.0, 1.0, 0.0])), np.array([0.0, 1.0, 0.0]), tilt])
            R0[1] = _unit(np.cross(R0[2], R0[0]))
            ax = axes0 * rng.uniform(0.75, 1.0, 3)
            off = np.zeros(3) if k == 0 else R0.T @ (rng.uniform(-0.7, 0.7, 3) * axes0 * np.array([0.7, 0.7, 1.0]))
            parts.append((centre + off, R0, ax))
        pl["parts"] = parts
        pl["centre"] = centre
        return True

    def _rasterise_lesion(self, pl, lid, n_target) -> int:
        rng, s = self.rng, self.s
        side = pl["side"]
        form = pl["form"]
        foci = form in ("foci_in_patch", "cluster")
        tmax = 1.3
        amp = pl["deform"]
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        for c, R, ax in pl["parts"]:
            ext = np.sqrt(((R.T * ax[None, :]) ** 2).sum(1)) * tmax * (1 + 2.0 * amp) + pl["edge_mm"]
            if foci:  # nodules at the footprint's rim reach beyond the patch
                ext = ext + 1.6 * _FOCUS["w"][1] * s ** _FOCUS["size_exp"] + 2 * max(self.sp, self.dzf)
            lo, hi = np.minimum(lo, c - ext), np.maximum(hi, c + ext)
        box = self._box(lo, hi)
        if box is None:
            return 0
        sl, W, V, U = box
        shape = (W.shape[0], V.shape[1], U.shape[2])
        rho = None
        for c, R, ax in pl["parts"]:
            du, dv, dw = U - np.float32(c[0]), V - np.float32(c[1]), W - np.float32(c[2])
            q = None
            for i in range(3):
                comp = (du * np.float32(R[i, 0]) + dv * np.float32(R[i, 1]) + dw * np.float32(R[i, 2])) / np.float32(ax[i])
                q = comp * comp if q is None else q + comp * comp
            r_ = np.sqrt(q)
            rho = r_ if rho is None else np.minimum(rho, r_)
        a_mean = float(np.mean([ax.mean() for _, _, ax in pl["parts"]]))
        spacing = (self.dzf, self.sp, self.sp)
        noise = _smooth_field(rng, shape, spacing, max(0.6 * a_mean, 1.5))
        tex = _smooth_field(rng, shape, spacing, float(np.clip(0.2 * a_mean, 1.2, 2.5 * max(s, 0.5))))
        rho *= 1 + np.float32(amp) * noise + np.float32(0.4 * amp) * tex
        del noise
        lungm = self.side[sl] == side
        allowed = lungm & (self.cls[sl] != AIR_IN)  # airway lumina stay air (air bronchograms), not lesion
        if pl["disease"] == "cap":  # central: never reaches the pleura (also not through a thick slice,
            # whose masks follow the majority of its sub-slices)
            margin = 1.05 * max(self.sz + (self.dzf if self.nsub > 1 else 0.0), self.sp) + 0.5 * self.sp
            # distance map on the box grown by the margin: the pleura just outside the box counts
            pk, pj = int(math.ceil(margin / self.dzf)) + 1, int(math.ceil(margin / self.sp)) + 1
            big = tuple(slice(max(q.start - pad, 0), min(q.stop + pad, n))
                        for q, pad, n in zip(sl, (pk, pj, pj), self.side.shape))
            dist = ndi.distance_transform_edt(self.side[big] == side, sampling=spacing)
            allowed &= dist[tuple(slice(q.start - b.start, q.stop - b.start) for q, b in zip(sl, big))] > margin
            del dist
        vals = rho[allowed]
        if vals.size == 0:
            return 0
        nt = int(round(n_target))
        if nt <= 0:
            return 0
        if form == "cluster":
            t = 1.0  # the virtual footprint patch as placed
        elif nt >= vals.size:
            t = tmax
        else:
            t = float(np.partition(vals, nt - 1)[nt - 1])
            t = float(np.clip(t, 0.5, tmax))
        f = 1 - rho / np.float32(t)
        e = np.float32(pl["edge_mm"] / max(a_mean * t, 1e-3))
        wgt = np.clip(0.5 + 0.5 * f / e, 0, 1)
        mask = allowed & (f > 0)
        wd = None
        if foci:
            vd = pl["f_dense"] * nt * self.sp * self.sp * self.dzf
            wd = self._foci_weight(pl, lungm, allowed & (f > 0), spacing, tex, vd)
            if wd is None:  # no open pleura under the footprint: dense core / plain consolidation
                form = "solid" if form == "cluster" else "core"
            else:
                fmask = allowed & (wd > 0.5)
                if form == "cluster":
                    mask, wgt = fmask, wd
                else:
                    mask = mask | fmask
                    wgt = np.maximum(wgt, wd)
        if not mask.any():
            return 0
        P = np.float32(self.lung_hu) + np.broadcast_to(self.grav[sl[1]][None, :, None], shape)
        wbar = float(wgt[mask].mean())
        pbar = float(P[mask].mean())
        if form == "patch":
            T = pbar + (pl["T_ggo"] - pbar) / max(wbar, 0.3)
        elif form == "solid":
            T = pbar + (pl["T_cons"] - pbar) / max(wbar, 0.3)
            T = min(T, 55.0)
        elif form == "cluster":  # small nodules: interiors near the target (no pile-up at the cap)
            T = min(pbar + (pl["T_cons"] - pbar) / max(wbar, 0.3), pl["T_cons"] + 30.0)
        elif form == "core":
            tg = pbar + (pl["T_ggo"] - pbar) / max(wbar, 0.3)
            T = tg + (pl["T_cons"] - tg) * _smoothstep((f - pl["f_core"]) / 0.2 + 0.5)
        else:  # foci_in_patch: GGO patch, consolidated foci at its pleural side
            T = pbar + (pl["T_ggo"] - pbar) / max(wbar, 0.3)
            dmask = mask & (wd > 0.5)
            wdbar = float(wd[dmask].mean()) if dmask.any() else 1.0
            T_d = min(pbar + (pl["T_cons"] - pbar) / max(wdbar, 0.3), pl["T_cons"] + 30.0)
        L = P + wgt * (np.float32(T) - P)
        if form == "foci_in_patch":
            L += wd * (np.float32(T_d) - L)
        L += wgt * np.float32(pl["tex_amp"]) * tex
        paint = (allowed if pl["disease"] == "cap" else lungm & (self.cls[sl] != AIR_IN)) & (wgt > 0)
        im = self.img[sl]
        lf = self.les_f[sl]
        owner = lf[mask]
        new_vox = int(np.count_nonzero(owner == 0))
        # a voxel shared with an earlier lesion belongs to the denser one (the one that sets its HU)
        take = (owner == 0) | (L[mask] >= im[mask])
        owner[take] = lid
        lf[mask] = owner
        im[paint] = np.maximum(im[paint], L[paint])
        return new_vox

    def _foci_weight(self, pl, lungm, footprint, spacing, tex, volume_mm3):
        """Soft weight (0..1, 0.5 at the border) of small consolidated nodules abutting the
        pleura under ``footprint``.  Each nodule is an ellipsoid (tangential semi-axis w, x 1-1.5
        along z, normal semi-axis d; ``_FOCUS``, x size_scale ** 0.3) whose centre lies 45-80 % of
        d inside the pleura, so that it touches the pleura over a contact narrower than itself;
        nodules are separated by lung / ground glass.  They are painted until their voxels
        reach ``volume_mm3`` or the footprint is full.  None when the footprint has no pleura."""
        rng, s = self.rng, self.s
        dz, sp = spacing[0], spacing[1]
        depth_vox = ndi.distance_transform_edt(lungm, sampling=spacing)
        # nodules sit on the open pleural surface, where a ball of radius r_open inside the
        # lung touches the pleura: not in the thin tips of the recesses or in the corners of
        # the lung (there a dense nodule would cut the tip off instead of biting into the outline)
        r_open = max(_FOCUS["open"] * s, 2.5 * sp)
        thick = ndi.distance_transform_edt(~(depth_vox > r_open), sampling=spacing) <= r_open + 1.01 * max(sp, dz)
        cand = np.flatnonzero((footprint & thick & (depth_vox <= 1.01 * max(sp, dz))).ravel())
        del thick
        if cand.size == 0:
            return None
        depth = np.maximum(depth_vox - 0.5 * sp, 0).astype(np.float32)  # below the pleura (mm)
        del depth_vox
        cand = rng.permutation(cand)[:4000]
        shape = lungm.shape
        kk, jj, ii = np.unravel_index(cand, shape)
        pts = np.stack([ii * sp, jj * sp, (kk + 0.5) * dz], 1)
        (wlo, whi), (dlo, dhi), gap = _FOCUS["w"], _FOCUS["d"], _FOCUS["gap"]
        sf = s ** _FOCUS["size_exp"]
        wmin = 1.5 * sp  # at least a few native pixels, so that a nodule survives the PSF

        def draw():
            w = max(rng.uniform(wlo, whi) * sf, wmin)
            d = max(rng.uniform(dlo, dhi) * sf, wmin)
            return w, rng.uniform(1.0, 1.5), d, rng.uniform(0.45, 0.8) * d

        centres, params = [], []
        vol = 0.0
        nxt = draw()
        for p in pts:
            w, ez, d, c = nxt
            if centres:
                cc = np.asarray(centres)
                pw = np.asarray([q[0] for q in params])
                pez = np.asarray([q[1] for q in params])
                dd = p - cc
                dist = np.sqrt(dd[:, 0] ** 2 + dd[:, 1] ** 2 + (dd[:, 2] / (0.5 * (ez + pez))) ** 2)
                if np.any(dist < w + pw + (gap * sf + sp)):
                    continue
            centres.append(p)
            params.append(nxt)
            vol += 0.9 * 4.0 / 3.0 * math.pi * w * w * ez * d  # ~10 % lies beyond the pleura
            if vol >= 2.0 * volume_mm3:  # enough candidates; painting stops at the volume
                break
            nxt = draw()
        wgt = np.zeros(shape, np.float32)
        edge = max(0.6 * pl["edge_mm"], 0.5 * sp)
        n_target = volume_mm3 / (sp * sp * dz)
        n_in = 0
        for (cx, cy, cz), (w, ez, d, c) in zip(centres, params):
            if n_in >= n_target:
                break
            r_xy, r_z = max(w, c + d) + 2 * edge, max(w * ez, c + d) + 2 * edge
            i0, i1 = max(int((cx - r_xy) / sp), 0), min(int((cx + r_xy) / sp) + 2, shape[2])
            j0, j1 = max(int((cy - r_xy) / sp), 0), min(int((cy + r_xy) / sp) + 2, shape[1])
            k0, k1 = max(int((cz - r_z) / dz), 0), min(int((cz + r_z) / dz) + 2, shape[0])
            sub = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
            x = (np.arange(i0, i1, dtype=np.float32) * sp - cx)[None, None, :]
            y = (np.arange(j0, j1, dtype=np.float32) * sp - cy)[None, :, None]
            z = ((np.arange(k0, k1, dtype=np.float32) + 0.5) * dz - cz)[:, None, None]
            dep = depth[sub]
            # offset from the pleural point split into depth (normal) and the rest (tangential)
            tan2 = np.maximum(x * x + y * y + z * z - dep * dep, 0) - z * z * np.float32(1 - 1 / ez ** 2)
            F = np.maximum(tan2, 0) / np.float32(w * w) + ((dep - np.float32(c)) / np.float32(d)) ** 2
            F *= 1 + 0.2 * tex[sub]
            r = np.sqrt(np.maximum(F, 0)) * np.float32(min(w, d))  # ~ mm inside (<) / outside the border
            wf = np.clip(0.5 + 0.5 * (np.float32(min(w, d)) - r) / np.float32(edge), 0, 1)
            n_in -= np.count_nonzero((wgt[sub] > 0.5) & lungm[sub])
            np.maximum(wgt[sub], wf, out=wgt[sub])
            n_in += np.count_nonzero((wgt[sub] > 0.5) & lungm[sub])
        return wgt * lungm

    # ------------------------------------------------------------------ output
    def finalize(self):
        p, rng = self.p, self.rng
        jc = self.nsub // 2
        if self.nsub > 1:
            img = self.img.reshape(self.nz, self.nsub, self.n, self.n).mean(axis=1, dtype=np.float32)
        else:
            img = self.img
        self.img = None
        lung = self._majority(self.side > 0).astype(np.uint8)
        if hasattr(self, "les_f"):
            # a voxel is lesion if most of its sub-slices are; it keeps the id of the centre
            # sub-slice (else of any lesion sub-slice); lesion voxels are lung voxels
            les_any = self._majority(self.les_f > 0)
            ids = self.les_f.reshape(self.nz, self.nsub, self.n, self.n)
            les = np.where(ids[:, jc] > 0, ids[:, jc], ids.max(axis=1))
            les = np.ascontiguousarray(np.where(les_any, les, 0).astype(np.uint8))
        else:
            les = np.zeros_like(lung)
        self.cls = self.side = self.les_f = None
        if p.blur_mm > 0:
            sig = (p.blur_mm / self.sz, p.blur_mm / self.sp, p.blur_mm / self.sp)
            img = ndi.gaussian_filter(img, sigma=sig, mode="nearest", truncate=3.0)
        step = max(1, int(4_000_000 // (self.n * self.n)))
        ct = np.empty(img.shape, np.int16)
        for k0 in range(0, self.nz, step):
            k1 = min(k0 + step, self.nz)
            sl = img[k0:k1]
            if p.noise_hu > 0:
                sl += rng.standard_normal(sl.shape, dtype=np.float32) * np.float32(p.noise_hu)
            np.clip(sl, -1024, 3071, out=sl)
            ct[k0:k1] = np.rint(sl)
        del img
        lesions = self._lesion_records(ct, lung, les)
        spacing = (float(self.sp), float(self.sp), float(self.sz))
        origin = (float(self.x0), float(self.y0), float(self.z_origin))

        def to_img(a):
            im = sitk.GetImageFromArray(a)
            im.SetSpacing(spacing)
            im.SetOrigin(origin)
            im.SetDirection((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
            return im

        return SyntheticCT(ct=to_img(ct), lung_mask=to_img(lung), lesion_mask=to_img((les > 0).astype(np.uint8)), lesions=lesions)

    def _majority(self, fine: np.ndarray) -> np.ndarray:
        """Native-slice mask from a boolean sub-slice array: True where most sub-slices are
        (the CT of a thick slice is the sub-slice average, so the masks follow the same rule)."""
        if self.nsub == 1:
            return fine
        counts = fine.reshape(self.nz, self.nsub, self.n, self.n).sum(axis=1, dtype=np.uint8)
        return counts > self.nsub // 2

    def _lesion_records(self, ct, lung, les):
        if not getattr(self, "planned", None):
            return []
        ids = [pl["id"] for pl in self.planned]
        flat = np.flatnonzero(les)
        lab = les.reshape(-1)[flat]
        nb = max(ids) + 1
        counts = np.bincount(lab, minlength=nb)
        present = [i for i in ids if counts[i] > 0]
        if not present:
            return []
        sums = np.bincount(lab, weights=ct.reshape(-1)[flat], minlength=nb)
        kji = np.unravel_index(flat, les.shape)
        cen = [np.bincount(lab, weights=x, minlength=nb) for x in kji]
        means = [sums[i] / counts[i] for i in present]
        coms = [tuple(c[i] / counts[i] for c in cen) for i in present]
        objs = ndi.find_objects(les)
        vox_ml = self.sp * self.sp * self.sz / 1000.0
        byid = {pl["id"]: pl for pl in self.planned}
        out = []
        for lid, mean, com in zip(present, means, coms):
            pl = byid[lid]
            k, j, i = com
            u = self.x0 + i * self.sp - self.shx
            v = self.y0 + j * self.sp - self.shy
            w = (k + 0.5) * self.sz
            sl = objs[lid - 1]
            sl = tuple(slice(max(x.start - 1, 0), x.stop + 1) for x in sl)
            m = les[sl] == lid
            dil = ndi.binary_dilation(m)
            subpleural = bool(np.any(dil & (lung[sl] == 0)))
            ci = ((w - self.Wc[0]) / self.dwc, (v - self.Vc[0]) / self.dvc, (u - self.Uc[0]) / self.dvc)
            depth = float(ndi.map_coordinates(self.depth_c, np.array(ci)[:, None], order=1, mode="nearest")[0])
            dh = float(np.linalg.norm(np.array([u, v, w]) - self.hilum[pl["side"]]))
            out.append(dict(
                kind=pl["kind"],
                side="right" if pl["side"] == 1 else "left",
                center_mm=[round(float(self.x0 + i * self.sp), 2), round(float(self.y0 + j * self.sp), 2),
                           round(float(self.z_origin + k * self.sz), 2)],
                volume_ml=round(float(counts[lid] * vox_ml), 4),
                mean_hu=round(float(mean), 1),
                subpleural=subpleural,
                distance_to_pleura_mm=round(depth, 2),
                central=bool(dh <= 0.45 * self.Ac),
            ))
        return out


def generate_subject(labels: dict, params: PhantomParams, seed: int) -> SyntheticCT:
    """Generate one synthetic chest CT with lung and lesion ground truth (see module docstring)."""
    ph = _Phantom(labels, params, int(seed))
    ph.sample_geometry()
    ph.precompute()
    ph.render_anatomy()
    ph.paint_mediastinum()
    ph.clean_lungs()
    ph.coarse()
    ph.intensities()
    ph.vessels()
    plans = ph.plan_lesions()
    ph.paint_lesions(plans)
    return ph.finalize()
