"""Procedural head anatomy as fractional tissue maps (partial volume), deterministic for an rng state.

Labels are rendered on a grid ``supersample`` times finer than the image and averaged, so a voxel on
a boundary holds the fractions of the tissues it straddles, as a scanner voxel would. Structures are
defined in millimetres in a head frame (x left-right, y posterior-anterior, z inferior-superior) that
is slightly rotated and shifted per subject; internal structures scale with the subject's brain.

What makes it brain-like, and where: cortical folding (sulci along zero crossings of a random field,
cortex wrapped around them), partial volume (supersampled labels), head shape (size by sex, per-axis
and low-frequency shape waves, rotation), atrophy with age (thinner cortex, wider sulci and outer CSF,
larger ventricles), scalp (fat, galea/muscle), skull (outer table, diploe, inner table) and air sinuses
(frontal, sphenoid and mastoid air cells in a thickened skull base: -1000 HU on CT, no MR signal).
Optional pathology (:mod:`.pathology`) is painted on top.
"""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .pathology import Pathology
from .tissues import ALL_TISSUES, BRAIN_TISSUES, PATHOLOGY_TISSUES, TISSUES, PhantomSubject, draw_subject

logger = logging.getLogger(__name__)

_INDEX = {t: i for i, t in enumerate(ALL_TISSUES)}  # healthy classes first, so their indices never change
_SLAB = 32  # fine-grid slices rendered at once, bounds memory for large shapes

# Internal structures in brain-normalised coordinates (centre, semi-axes); left/right mirrored in x.
# Sizes follow a standard adult atlas at the scale of this ellipsoidal brain.
_VENTRICLES = (((0.13, -0.05, 0.15), (0.07, 0.35, 0.10)), ((0.12, 0.25, 0.08), (0.07, 0.12, 0.12)),
               ((0.20, -0.35, 0.05), (0.07, 0.14, 0.09)), ((0.42, 0.0, -0.28), (0.04, 0.15, 0.04)))
_THIRD_VENTRICLE = ((0.0, -0.02, -0.05), (0.02, 0.15, 0.12))
_DEEP_GM = (((0.15, -0.12, 0.0), (0.16, 0.22, 0.15)),   # thalamus
            ((0.42, 0.10, 0.02), (0.09, 0.24, 0.16)),   # putamen
            ((0.22, 0.25, 0.15), (0.07, 0.12, 0.12)))   # caudate head
_MTL = ((0.45, 0.0, -0.35), (0.09, 0.26, 0.09))          # hippocampus / entorhinal cortex
_CHOROID = ((0.20, -0.33, 0.05), (0.05, 0.09, 0.06))
# Paranasal sinuses and mastoid air cells: direction from the head centre (head-normalised), angular
# radius (rad), thickness range of the skull base they hollow (mm), probability of being present
# (frontal sinuses are absent in about 5 % of adults). Adult sizes: frontal about 30 x 25 x 15 mm, sphenoid
# about 20 mm, mastoid air cells about 20-30 mm (standard anatomy texts, e.g. Gray's Anatomy).
_SINUSES = (((0.0, 0.96, -0.28), 0.24, (9.0, 16.0), 0.95),       # frontal
            ((0.0, 0.30, -0.95), 0.22, (12.0, 20.0), 1.0),        # sphenoid, below the sella
            ((0.62, -0.25, -0.74), 0.20, (8.0, 14.0), 0.9),       # right mastoid
            ((-0.62, -0.25, -0.74), 0.20, (8.0, 14.0), 0.9))      # left mastoid
_SINUS_WALL = 1.2  # mm of bone around each air cell


@dataclass(frozen=True)
class _Anatomy:
    """Random shape parameters of one subject (mm unless noted)."""

    rotation: np.ndarray
    shift: np.ndarray
    head_axes: np.ndarray
    layers: np.ndarray  # cumulative depths: fat, muscle, outer table, diploe, inner table ends
    csf_outer: float
    brain_axes: np.ndarray
    shape_waves: tuple[np.ndarray, np.ndarray, float]
    fold_waves: tuple[np.ndarray, np.ndarray]
    sulcal_depth: float
    sulcal_width: float
    gyral_width: float
    cortex: float
    fissure: float
    ventricle_scale: float
    lesions: list[tuple[np.ndarray, np.ndarray]]
    sinuses: tuple[tuple[np.ndarray, float, float], ...] = ()  # (unit direction, cos of angular radius, height mm)


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * (2.0 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    return k.astype(np.float32), rng.uniform(0.0, 2.0 * np.pi, size=n).astype(np.float32)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_anatomy(rng: np.random.Generator, subject: PhantomSubject, sinuses: bool = True) -> _Anatomy:
    """Shape parameters; atrophy (thinner cortex, wider sulci and CSF, larger ventricles) grows with age.

    The sinuses are drawn last, so the other parameters are those of a head drawn without them."""
    ageing = float(np.clip((subject.age - 20.0) / 70.0, 0.0, 1.0)) * rng.uniform(0.7, 1.3)
    size = (1.03 if subject.sex == "M" else 0.97) * rng.uniform(0.96, 1.03)
    head_axes = np.array([70.0, 88.0, 82.0]) * size * rng.uniform(0.98, 1.02, size=3)
    # Scalp (fat, galea/muscle), skull (outer table, diploe, inner table): about 5 + 6.5 mm in adults.
    thickness = np.array([rng.uniform(1.5, 3.0), rng.uniform(2.0, 3.5), rng.uniform(1.5, 2.5),
                          rng.uniform(2.0, 3.5), rng.uniform(1.2, 2.0)])
    csf_outer = rng.uniform(1.5, 2.5) + ageing * rng.uniform(2.0, 4.0)
    brain_axes = head_axes - thickness.sum() - csf_outer
    lesions = []
    n_lesions = int(rng.poisson(max(subject.age - 35.0, 0.0) ** 1.5 / 25.0))  # WMH load grows with age
    for _ in range(n_lesions):
        if rng.random() < 0.7:  # periventricular: just outside a lateral ventricle
            centre, axes = _VENTRICLES[rng.integers(3)]
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            position = np.asarray(centre) + direction * np.asarray(axes) * rng.uniform(1.2, 2.0)
            position[0] *= rng.choice([-1.0, 1.0])
        else:  # deep white matter
            position = rng.uniform(-0.45, 0.45, size=3) * np.array([1.0, 1.0, 0.8]) + np.array([0, 0, 0.15])
        lesions.append((position * brain_axes, rng.uniform(1.5, 5.0, size=3)))
    anatomy = _Anatomy(
        rotation=_rotation(rng, 6.0), shift=rng.uniform(-3.0, 3.0, size=3), head_axes=head_axes,
        layers=np.cumsum(thickness), csf_outer=csf_outer, brain_axes=brain_axes,
        shape_waves=(*_waves(rng, 6, (120.0, 250.0)), rng.uniform(1.0, 3.0)),
        fold_waves=_waves(rng, 24, (14.0, 28.0)), sulcal_depth=rng.uniform(10.0, 16.0),
        sulcal_width=0.12 + 0.25 * ageing, gyral_width=rng.uniform(0.8, 1.0),
        cortex=rng.uniform(2.6, 3.2) - 0.5 * ageing,
        fissure=1.0 + 1.5 * ageing, ventricle_scale=rng.uniform(0.85, 1.15) * (1.0 + 0.7 * ageing),
        lesions=lesions,
    )
    if not sinuses:
        return anatomy
    cells = []
    for direction, radius, height, probability in _SINUSES:
        scale, size = rng.uniform(0.8, 1.2), rng.uniform(*height)
        if rng.random() < probability:
            unit = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
            cells.append((unit.astype(np.float32), float(np.cos(radius * scale)), float(size)))
    return dataclasses.replace(anatomy, sinuses=tuple(cells))


def _depth(p: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Approximate distance (mm) inside an ellipsoid surface, exact for a sphere: (1 - r) / |grad r|."""
    inv = (1.0 / axes).astype(np.float32)
    q0, q1, q2 = p[0] * inv[0], p[1] * inv[1], p[2] * inv[2]
    r = np.sqrt(q0 * q0 + q1 * q1 + q2 * q2) + np.float32(1e-6)
    grad = np.sqrt((q0 * inv[0]) ** 2 + (q1 * inv[1]) ** 2 + (q2 * inv[2]) ** 2) / r + np.float32(1e-9)
    return (1.0 - r) / grad


def _inside(p: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    c = np.asarray(centre, dtype=np.float32)
    inv = 1.0 / np.asarray(axes, dtype=np.float32)
    return ((p[0] - c[0]) * inv[0]) ** 2 + ((p[1] - c[1]) * inv[1]) ** 2 + ((p[2] - c[2]) * inv[2]) ** 2 <= 1.0


def _grid_field(waves: tuple[np.ndarray, np.ndarray], a: _Anatomy, xs: np.ndarray, ys: np.ndarray,
                zs: np.ndarray) -> np.ndarray:
    """Unit-variance sum of plane waves (head frame) on a world grid, flattened in (z, y, x) order.

    The head frame is an affine map of the grid, so each wave factorises over the axes and the sum is
    one complex matrix product instead of a cosine per point and wave.
    """
    k, phase = waves
    k_world = k.astype(np.float64) @ a.rotation.T
    offset = phase - k_world @ a.shift
    ex = np.exp(1j * np.outer(k_world[:, 0], xs)).astype(np.complex64)
    ey = np.exp(1j * np.outer(k_world[:, 1], ys)).astype(np.complex64)
    ez = np.exp(1j * (np.outer(k_world[:, 2], zs) + offset[:, None])).astype(np.complex64)
    zy = (ez.T[:, None, :] * ey.T[None, :, :]).reshape(-1, len(phase))
    return (zy @ ex).real.ravel() * np.float32(np.sqrt(2.0 / len(phase)))


def _skull_base(p: np.ndarray, a: _Anatomy) -> np.ndarray:
    """Extra skull thickness (mm) that holds the air sinuses: a dome per sinus, 0 away from them."""
    base = np.zeros(p.shape[1], dtype=np.float32)
    if not a.sinuses:
        return base
    # Only directions below the highest reach of any dome can be affected (the sinuses lie low): points of
    # the head have |q| <= 1.03 (shape waves), so q_z above 1.03 x that reach (or above 0) is out of every dome.
    reach = max(float(np.sin(np.arcsin(unit[2]) + np.arccos(cos_radius))) for unit, cos_radius, _ in a.sinuses)
    candidates = np.flatnonzero(p[2] / np.float32(a.head_axes[2]) <= max(1.03 * reach, 0.0))
    q = p[:, candidates] / a.head_axes[:, None].astype(np.float32)
    q /= np.linalg.norm(q, axis=0, keepdims=True) + np.float32(1e-6)
    dome = np.zeros(len(candidates), dtype=np.float32)
    for unit, cos_radius, height in a.sinuses:
        closeness = (unit @ q - cos_radius) / (1.0 - cos_radius)  # 1 at the centre, 0 at the rim
        dome = np.maximum(dome, np.float32(height) * np.sqrt(np.clip(closeness, 0.0, 1.0)))  # a rounded dome
    base[candidates] = dome
    return base


def _label_points(p: np.ndarray, a: _Anatomy, shape_field: np.ndarray, fold_field: np.ndarray,
                  pathology: Pathology | None = None) -> np.ndarray:
    """Tissue index of head-frame points ``p`` (3, n), painted from outside in on shrinking subsets."""
    sub = np.zeros(p.shape[1], dtype=np.uint8)
    depth = _depth(p, a.head_axes) + a.shape_waves[2] * shape_field / 2.0
    for name, start, end in zip(("fat", "muscle", "bone", "marrow", "bone"), np.r_[0.0, a.layers[:-1]], a.layers):
        sub[(depth >= start) & (depth < end)] = _INDEX[name]
    inner = np.flatnonzero(depth >= a.layers[-1])
    sub[inner] = _INDEX["csf"]
    # Superior sagittal sinus: midline vein between the inner table and the brain, upper half of the head.
    pi, di = p[:, inner], depth[inner]
    sinus = (np.abs(pi[0]) < 3.5) & (di < a.layers[-1] + min(6.0, a.csf_outer + 2.0)) & (pi[2] > -0.1 * a.head_axes[2])
    sub[inner[sinus]] = _INDEX["vessel"]
    brain_depth = di - a.layers[-1] - a.csf_outer
    if a.sinuses:  # the skull base thickens below the brain and holds the air cells
        base = _skull_base(pi, a)
        below = di - a.layers[-1]
        thick = below < base
        cell = thick & (below > _SINUS_WALL) & (below < base - _SINUS_WALL)
        sub[inner[thick]] = _INDEX["bone"]
        sub[inner[cell]] = _INDEX["air"]
        brain_depth = brain_depth - base
    keep = brain_depth >= 0.0
    inner, pi, brain_depth = inner[keep], pi[:, keep], brain_depth[keep]
    g = fold_field[inner]
    b = a.brain_axes
    qz = pi[2] / b[2]
    # Interhemispheric fissure: the medial surface acts as a second pial surface above the corpus callosum.
    fissure = (qz > -0.35) & (brain_depth < 0.5 * b[2] * (qz + 0.35) + 5.0)
    surface = np.where(fissure, np.minimum(brain_depth, np.abs(pi[0]) - a.fissure), brain_depth)
    # Folding: sulci along zero-crossings of a smooth random field; cortex wraps around them (gyri).
    pial = a.sulcal_depth * np.exp(-((g / a.sulcal_width) ** 2))
    white = a.cortex + a.sulcal_depth * np.exp(-((g / (a.sulcal_width + a.gyral_width)) ** 2))
    tissue = np.where(surface < pial, _INDEX["csf"], np.where(surface < white, _INDEX["gm"], _INDEX["wm"]))
    deep = np.flatnonzero(brain_depth > 10.0)
    pd = pi[:, deep]
    t_deep = tissue[deep]
    for centre, axes in (*_DEEP_GM, _MTL):
        name = "mtl" if axes == _MTL[1] else "deep_gm"
        for side in (-1.0, 1.0):
            t_deep[_inside(pd, np.array(centre) * [side, 1.0, 1.0] * b, np.array(axes) * b)] = _INDEX[name]
    for centre, axes in a.lesions:
        t_deep[(t_deep == _INDEX["wm"]) & _inside(pd, centre, axes)] = _INDEX["lesion"]
    v = a.ventricle_scale
    ventricle = _inside(pd, np.array(_THIRD_VENTRICLE[0]) * b, np.array(_THIRD_VENTRICLE[1]) * b * [v, 1.0, 1.0])
    for centre, axes in _VENTRICLES:
        for side in (-1.0, 1.0):
            ventricle |= _inside(pd, np.array(centre) * [side, 1.0, 1.0] * b, np.array(axes) * b * v)
    t_deep[ventricle] = _INDEX["csf"]
    for side in (-1.0, 1.0):
        choroid = _inside(pd, np.array(_CHOROID[0]) * [side, 1.0, 1.0] * b, np.array(_CHOROID[1]) * b)
        t_deep[ventricle & choroid] = _INDEX["choroid"]
    tissue[deep] = t_deep
    if pathology is not None and pathology.kinds:
        _paint_pathology(tissue, pi, brain_depth, surface, g, b, pathology)
    sub[inner] = tissue
    return sub


_PARENCHYMA = np.array([_INDEX[t] for t in ("gm", "mtl", "deep_gm", "wm", "lesion")], dtype=np.uint8)


def _paint_pathology(tissue: np.ndarray, p: np.ndarray, brain_depth: np.ndarray, surface: np.ndarray,
                     g: np.ndarray, b: np.ndarray, pathology: Pathology) -> None:
    """Paint a case's lesions over the healthy labels of brain points ``p`` (in place).

    WMH take white matter only; a tumour replaces parenchyma (oedema only white matter, where vasogenic
    oedema spreads); an infarct hollows cortex and white matter of its territory from the pial surface,
    sulci included, and leaves a gliotic rim; ventricles and choroid plexus are never overwritten.
    """
    parenchyma = np.isin(tissue, _PARENCHYMA)
    white = (tissue == _INDEX["wm"]) | (tissue == _INDEX["lesion"])
    for centre, axes in pathology.wmh:
        tissue[(tissue == _INDEX["wm"]) & _inside(p, np.asarray(centre) * b, axes)] = _INDEX["lesion"]
    if pathology.tumour is not None:
        t = pathology.tumour
        # irregular outline: the radius follows the folding field (wavelength 14-28 mm) by +-2 mm
        r = np.linalg.norm(p - (np.asarray(t.centre) * b)[:, None].astype(np.float32), axis=0) + 2.0 * g
        oedema = white & (r < t.radius + t.oedema)
        tissue[oedema] = _INDEX["oedema"]
        core = parenchyma & (r < t.radius)
        tissue[core] = _INDEX["enhancing"]
        if t.necrotic:
            tissue[core & (r < t.radius - t.rim)] = _INDEX["necrosis"]
    if pathology.infarct is not None:
        inf = pathology.infarct
        q = p / b[:, None].astype(np.float32)
        norm = np.linalg.norm(q, axis=0) + np.float32(1e-6)
        # lateral distance (mm) from the territory's axis, measured at the brain surface
        angle = np.arccos(np.clip(inf.direction.astype(np.float32) @ q / norm, -1.0, 1.0))
        lateral = angle * float(np.mean(b)) + 3.0 * g
        sulcal = (tissue == _INDEX["csf"]) & (surface < 20.0) & (brain_depth < inf.depth)
        reach = (lateral < inf.radius) & (brain_depth < inf.depth)
        rim = (lateral < inf.radius + inf.rim) & (brain_depth < inf.depth + inf.rim) & ~reach
        tissue[rim & parenchyma] = _INDEX["gliosis"]
        tissue[reach & (parenchyma | sulcal | np.isin(tissue, [_INDEX[t] for t in PATHOLOGY_TISSUES]))] = _INDEX["infarct"]


def simulate_subject(rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 64),
                     voxel_size: tuple[float, float, float] = (3.2, 3.2, 3.2),
                     subject: PhantomSubject | None = None, supersample: int = 2, *,
                     pathology: Pathology | None = None, sinuses: bool = True) -> dict[str, np.ndarray]:
    """Fractional tissue maps (float32, (z, y, x), summing to 1) of a new head; draws ``subject`` when None.

    ``voxel_size`` is (x, y, z) mm; the head is centred in the field of view like a scanner's isocentre.
    The maps have the keys of TISSUES, and those of PATHOLOGY_TISSUES as well when ``pathology`` has a
    lesion. ``sinuses=False`` gives the head as drawn before the air sinuses existed (older datasets).
    """
    if subject is None:
        subject = draw_subject(rng)
    a = _draw_anatomy(rng, subject, sinuses)
    names = ALL_TISSUES if pathology is not None and pathology.kinds else TISSUES
    nz, ny, nx = (int(s) for s in shape)
    s = int(supersample)
    sx, sy, sz = (float(v) for v in voxel_size)

    def axis(n: int, spacing: float) -> np.ndarray:
        return (((np.arange(n * s) + 0.5) / s - 0.5) - (n - 1) / 2.0).astype(np.float32) * np.float32(spacing)

    xs, ys, zs = axis(nx, sx), axis(ny, sy), axis(nz, sz)
    counts = np.zeros((len(names), nz, ny, nx), dtype=np.float32)
    # Head frame = R^T (world - shift), evaluated per axis and broadcast (no (3, n) matrix product).
    rot_t = a.rotation.T
    offset = -(rot_t @ a.shift)
    step = _SLAB - _SLAB % s
    coarse_yx = ((np.arange(ny * s) // s)[:, None] * nx + (np.arange(nx * s) // s)[None, :]).astype(np.int64)
    reach = 1.0 / (a.head_axes + 8.0) ** 2  # points beyond the head ellipsoid + 8 mm are air
    for z0 in range(0, nz * s, step):
        z_slab = zs[z0:z0 + step]
        head = [np.float32(rot_t[i, 0]) * xs[None, None, :] + np.float32(rot_t[i, 1]) * ys[None, :, None]
                + (np.float32(rot_t[i, 2]) * z_slab + np.float32(offset[i]))[:, None, None] for i in range(3)]
        near = np.flatnonzero((head[0] ** 2 * reach[0] + head[1] ** 2 * reach[1] + head[2] ** 2 * reach[2]) < 1.0)
        p = np.stack([h.ravel()[near] for h in head])
        fields = (_grid_field(a.shape_waves[:2], a, xs, ys, z_slab)[near], _grid_field(a.fold_waves, a, xs, ys, z_slab)[near])
        label = _label_points(p, a, *fields, pathology=pathology)
        zi, nzc = z0 // s, len(z_slab) // s
        coarse = ((np.arange(len(z_slab)) // s)[:, None, None] * (ny * nx) + coarse_yx[None]).ravel()[near]
        binned = np.bincount(coarse * len(names) + label, minlength=nzc * ny * nx * len(names))
        counts[:, zi:zi + nzc] = binned.reshape(nzc, ny, nx, len(names)).transpose(3, 0, 1, 2)
    counts[TISSUES.index("air")] += float(s ** 3) - counts.sum(0)  # points skipped as far outside
    counts /= float(s ** 3)
    return {t: counts[i] for i, t in enumerate(names)}


#: Tissues outside the brain that skull stripping removes (the brain mask never holds a voxel mostly of these).
EXTRACEREBRAL_TISSUES = ("bone", "marrow", "air", "fat", "muscle")

def brain_mask(tissues: dict[str, np.ndarray], exclude_extracerebral: bool = True) -> np.ndarray:
    """Brain mask (uint8) as skull stripping gives it: parenchyma with ventricles and sulci filled in, and never a
    voxel that is mostly skull, scalp or air (closing would otherwise bridge onto the thickened skull base that holds
    the sinuses: 29 voxels above 150 HU per demo brain, which dominated the brain-range PSNR of synthetic CT).
    ``exclude_extracerebral=False`` is the rule of phantoms made before the sinuses (their files stay identical)."""
    parenchyma = sum(tissues[t] for t in (*BRAIN_TISSUES, *PATHOLOGY_TISSUES) if t in tissues)
    mask = np.asarray(parenchyma) >= 0.3
    mask = ndimage.binary_closing(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    extracerebral = sum(tissues[t] for t in EXTRACEREBRAL_TISSUES if t in tissues)
    if exclude_extracerebral and not isinstance(extracerebral, int):
        mask &= np.asarray(extracerebral) < 0.5
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask.astype(np.uint8)
