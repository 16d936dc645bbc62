"""Optional pathology in the phantom: chronic infarct, white-matter hyperintensities, tumour with oedema.

A phantom written with ``lesions`` (``unisyn_phantom --lesions infarct,wmh,tumour --lesion_fraction F``)
gives a fraction F of its cases pathology, each case deciding from its own random stream, so a case
without pathology is the head (and the images) a lesion-free phantom has. The geometry is drawn here in
brain-normalised coordinates and painted by :mod:`.anatomy`; the physics of the new tissue classes is
in :mod:`.tissues` (relaxation, HU) and below (tracer uptake). Every case of such a phantom gets a
label map ``<case>/<case>_lesions.nii.gz`` (:data:`LESION_LABELS`), named in phantom.json, not in
dataset.json (a label map is not an image of the case).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .tissues import CT_HU_120, PATHOLOGY_TISSUES, PhantomSubject

logger = logging.getLogger(__name__)

LESION_KINDS: tuple[str, ...] = ("infarct", "wmh", "tumour")
# Label values of the lesion map; WMH (label 2) are the "lesion" tissue class, which ageing alone already
# produces, so cases without added pathology can carry label 2 too.
LESION_LABELS: dict[int, str] = {0: "none", 1: "infarct cavity", 2: "white-matter hyperintensity",
                                 3: "enhancing tumour", 4: "oedema", 5: "necrotic tumour core", 6: "gliosis"}
LABEL_TISSUES: tuple[tuple[int, str], ...] = ((1, "infarct"), (2, "lesion"), (3, "enhancing"), (4, "oedema"),
                                              (5, "necrosis"), (6, "gliosis"))
LESION_FILE_SUFFIX = "_lesions.nii.gz"

# Vascular territories of a chronic infarct: direction from the brain centre (brain-normalised, left side;
# mirrored at random), cone half-width in mm at the surface, and weight (MCA infarcts are the commonest).
_TERRITORIES: dict[str, tuple[tuple[float, float, float], float]] = {
    "MCA": ((-0.85, 0.15, 0.35), 0.70), "PCA": ((-0.25, -0.90, 0.05), 0.20), "ACA": ((-0.10, 0.45, 0.85), 0.10),
}

# Tracer uptake of the pathology classes, relative to the subject's own tissues where it is a ratio.
# FDG: a chronic infarct is metabolically silent (CSF level) and its rim and oedematous WM hypometabolic
# (Kuhl et al., Ann Neurol 1980;8:47); viable high-grade glioma takes up FDG at or above cortex, its
# necrosis does not (Di Chiro et al., Neurology 1982;32:1323). Amyloid and tau tracers: non-specific
# binding only (damaged WM binds less, a leaky tumour rim about blood pool).
FDG_RELATIVE = {"gliosis": ("wm", 0.55, 0.8), "oedema": ("wm", 0.6, 0.85), "enhancing": ("gm", 0.9, 1.4)}
FDG_ABSOLUTE = {"infarct": (0.3, 0.7), "necrosis": (0.5, 1.0)}
AV45_RELATIVE = {"gliosis": ("wm", 0.6, 0.8), "oedema": ("wm", 0.7, 0.9)}
AV45_ABSOLUTE = {"infarct": (0.2, 0.4), "enhancing": (0.8, 1.2), "necrosis": (0.3, 0.5)}
TAU_RELATIVE = {"gliosis": ("wm", 0.9, 1.05), "oedema": ("wm", 0.85, 1.0)}
TAU_ABSOLUTE = {"infarct": (0.3, 0.5), "enhancing": (1.0, 1.3), "necrosis": (0.4, 0.6)}


@dataclass(frozen=True)
class Infarct:
    """A chronic territorial infarct: a cavity from the pial surface ``depth`` mm deep, ``radius`` mm wide
    (at the surface; the boundary is irregular), wrapped in a gliotic rim ``rim`` mm thick."""

    direction: np.ndarray  # unit vector in brain-normalised coordinates
    radius: float
    depth: float
    rim: float
    territory: str


@dataclass(frozen=True)
class Tumour:
    """A glioma-like mass: enhancing rim to ``radius`` mm, necrotic core inside ``radius - rim`` (when
    ``necrotic``), vasogenic oedema spreading ``oedema`` mm further through white matter."""

    centre: np.ndarray  # brain-normalised
    radius: float
    rim: float
    necrotic: bool
    oedema: float


@dataclass(frozen=True)
class Pathology:
    """What one case carries; empty (``kinds == ()``) for a case the lesion fraction left healthy."""

    kinds: tuple[str, ...] = ()
    infarct: Infarct | None = None
    tumour: Tumour | None = None
    wmh: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (brain-normalised centre, semi-axes mm)


def parse_lesion_kinds(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"infarct,wmh"`` or a sequence -> the kinds in :data:`LESION_KINDS` order; ``all`` names every kind."""
    if value is None:
        return ()
    items = [v for part in ([value] if isinstance(value, str) else list(value)) for v in str(part).split(",")]
    names = {v.strip().lower() for v in items if v.strip()}
    if "all" in names:
        names = (names - {"all"}) | set(LESION_KINDS)
    names = {"tumour" if n == "tumor" else n for n in names}
    unknown = sorted(names - set(LESION_KINDS))
    if unknown:
        raise ValueError(f"lesions: unknown kind {', '.join(unknown)}; known: {', '.join(LESION_KINDS)} (or all)")
    return tuple(k for k in LESION_KINDS if k in names)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def draw_pathology(rng: np.random.Generator, kinds: Sequence[str], fraction: float) -> Pathology:
    """Whether the case has pathology (probability ``fraction``) and, if so, one lesion of every kind."""
    if not kinds or rng.random() >= fraction:
        return Pathology()
    infarct = tumour = None
    wmh: list[tuple[np.ndarray, np.ndarray]] = []
    if "infarct" in kinds:
        names = list(_TERRITORIES)
        weights = np.array([_TERRITORIES[n][1] for n in names])
        territory = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        direction = np.array(_TERRITORIES[territory][0]) + rng.normal(0.0, 0.12, size=3)
        direction[0] = abs(direction[0]) * rng.choice([-1.0, 1.0])
        infarct = Infarct(_unit(direction), float(rng.uniform(14.0, 30.0)), float(rng.uniform(10.0, 22.0)),
                          float(rng.uniform(2.0, 3.5)), territory)
    if "tumour" in kinds:
        centre = np.array([rng.uniform(0.25, 0.5) * rng.choice([-1.0, 1.0]), rng.uniform(-0.4, 0.45),
                           rng.uniform(-0.05, 0.4)])
        radius = float(rng.uniform(9.0, 18.0))
        tumour = Tumour(centre, radius, float(rng.uniform(2.5, 4.5)), bool(rng.random() < 0.75),
                        float(rng.uniform(6.0, 16.0)))
    if "wmh" in kinds:  # moderate to severe load (Fazekas 2-3): periventricular caps and confluent deep lesions
        for _ in range(int(rng.integers(8, 20))):
            position = rng.uniform(-0.4, 0.4, size=3) * np.array([0.8, 1.0, 0.6]) + np.array([0.0, 0.0, 0.2])
            position[0] = np.sign(position[0] or 1.0) * max(abs(position[0]), 0.2)
            wmh.append((position, rng.uniform(3.0, 8.0, size=3)))
    return Pathology(tuple(kinds), infarct, tumour, wmh)


def _uptake(rng: np.random.Generator, own: dict[str, float], relative: dict[str, tuple[str, float, float]],
            absolute: dict[str, tuple[float, float]]) -> dict[str, float]:
    values = dict(own)
    values.update({t: own[ref] * float(rng.uniform(lo, hi)) for t, (ref, lo, hi) in relative.items()})
    values.update({t: float(rng.uniform(lo, hi)) for t, (lo, hi) in absolute.items()})
    return values


def with_pathology_values(subject: PhantomSubject, rng: np.random.Generator) -> PhantomSubject:
    """The subject with its own draws of every pathology class (MR factors, HU, tracer uptake) added;
    its healthy values are unchanged."""
    mri = dict(subject.mri_factors)
    mri.update({t: (float(rng.uniform(0.93, 1.07)), float(rng.uniform(0.93, 1.07)), float(rng.uniform(0.92, 1.08)),
                    float(rng.uniform(0.97, 1.03))) for t in PATHOLOGY_TISSUES})
    ct = dict(subject.ct_hu)
    ct.update({t: float(rng.uniform(*CT_HU_120[t])) for t in PATHOLOGY_TISSUES})
    return dataclasses.replace(
        subject, mri_factors=mri, ct_hu=ct, fdg_suv=_uptake(rng, subject.fdg_suv, FDG_RELATIVE, FDG_ABSOLUTE),
        av45_suvr=_uptake(rng, subject.av45_suvr, AV45_RELATIVE, AV45_ABSOLUTE),
        tau_suvr=_uptake(rng, subject.tau_suvr, TAU_RELATIVE, TAU_ABSOLUTE))


def lesion_labels(tissues: dict[str, np.ndarray]) -> np.ndarray:
    """Lesion label map (uint8, :data:`LESION_LABELS`): a voxel takes the pathology class with the largest
    fraction where the pathology classes together fill at least half of it, else 0."""
    shape = next(iter(tissues.values())).shape
    present = [(label, tissues[name]) for label, name in LABEL_TISSUES if name in tissues]
    if not present:
        return np.zeros(shape, dtype=np.uint8)
    stack = np.stack([fraction for _, fraction in present])
    codes = np.array([label for label, _ in present], dtype=np.uint8)
    return np.where(stack.sum(0) >= 0.5, codes[np.argmax(stack, axis=0)], 0).astype(np.uint8)
