"""Tissue classes and their physical parameters (MRI relaxation, CT attenuation, PET uptake).

Nominal values are literature orders of magnitude (see docs in /shared/reference/tissue_parameters.md);
each subject draws its own values around them (studies differ by 10-20%), so that a network trained on
the phantom cannot memorise one set of constants.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from unisyn_v2.metadata.fields import SubjectMetadata

logger = logging.getLogger(__name__)

# Fractional maps use exactly these keys; they sum to 1 in every voxel ("air" is the remainder).
# "mtl" is medial temporal grey matter (hippocampus/entorhinal): grey matter everywhere except in tau PET.
TISSUES: tuple[str, ...] = (
    "air", "fat", "muscle", "bone", "marrow", "csf", "gm", "mtl", "deep_gm", "wm", "lesion", "vessel", "choroid",
)
BRAIN_TISSUES: tuple[str, ...] = ("gm", "mtl", "deep_gm", "wm", "lesion")
# Pathology (optional, ``PhantomSpec.lesions``): chronic infarct cavity and its gliotic rim, tumour with an
# enhancing rim, a necrotic core and vasogenic oedema. Kept out of TISSUES so that a healthy head draws
# and renders exactly what it did before pathology existed (its maps simply lack these keys); the
# white-matter hyperintensities are the existing "lesion" class. Their values: see .pathology.
PATHOLOGY_TISSUES: tuple[str, ...] = ("infarct", "gliosis", "enhancing", "necrosis", "oedema")
ALL_TISSUES: tuple[str, ...] = TISSUES + PATHOLOGY_TISSUES


@dataclass(frozen=True)
class Relaxation:
    """Nominal MR properties; times in ms, PD relative to CSF, chi in ppm relative to CSF."""

    t1_15: float
    t1_30: float
    t2_15: float
    t2_30: float
    t2s_30: float
    pd: float
    chi: float = 0.0  # magnetic susceptibility difference (SWI phase)
    gd_mM: float = 0.0  # gadolinium concentration after a single dose (T1CE)


# T1/T2 of WM, GM, muscle and blood at 1.5 T and 3 T: Stanisz et al., MRM 2005;54:507 (WM 884/1084 ms,
# GM 1124/1820 ms, muscle 1008/1412 ms, blood 1441/1932 ms); 3 T brain T1/T2: Wansapura et al., JMRI
# 1999;9:531; CSF T1: Lu et al., JMRI 2005;22:13 (about 4,200 ms at 3 T); fat and marrow: Gold et al.,
# AJR 2004;183:343; T2* at 3 T (WM 45-50, GM 50-60, iron-rich deep grey 35-45 ms): Peters et al., MRI
# 2007;25:748; venous blood T2/T2* (oxygenation about 60%): Zhao et al., MRM 2007;58:592.
# Susceptibilities (ppm): deoxygenated venous blood about +0.35, iron in basal ganglia about +0.08,
# myelinated WM about -0.03 (Haacke et al., MRM 2004;52:612; Liu et al., NeuroImage 2012).
# Gadolinium after 0.1 mmol/kg: blood about 0.6 mM, choroid plexus (leaky, no BBB) about 0.4 mM.
RELAXATION: dict[str, Relaxation] = {
    "air": Relaxation(1000.0, 1000.0, 1.0, 1.0, 1.0, 0.0),
    "fat": Relaxation(280.0, 380.0, 120.0, 110.0, 30.0, 0.90, gd_mM=0.02),
    "muscle": Relaxation(1000.0, 1410.0, 44.0, 50.0, 30.0, 0.75, gd_mM=0.05),
    "bone": Relaxation(1500.0, 1500.0, 0.5, 0.5, 0.5, 0.05),
    "marrow": Relaxation(300.0, 400.0, 100.0, 95.0, 25.0, 0.85, gd_mM=0.03),
    "csf": Relaxation(3700.0, 4200.0, 1800.0, 1800.0, 800.0, 1.00),
    "gm": Relaxation(1200.0, 1700.0, 95.0, 99.0, 55.0, 0.80),
    "mtl": Relaxation(1200.0, 1700.0, 95.0, 99.0, 55.0, 0.80),
    "deep_gm": Relaxation(1050.0, 1420.0, 85.0, 80.0, 40.0, 0.78, chi=0.08),
    "wm": Relaxation(830.0, 1080.0, 75.0, 70.0, 48.0, 0.69, chi=-0.03),
    "lesion": Relaxation(1200.0, 1450.0, 130.0, 125.0, 60.0, 0.80),
    "vessel": Relaxation(1440.0, 1930.0, 150.0, 70.0, 20.0, 0.85, chi=0.35, gd_mM=0.6),
    "choroid": Relaxation(1000.0, 1300.0, 100.0, 95.0, 40.0, 0.85, gd_mM=0.4),
    # Pathology: relaxation is prolonged where tissue water rises (Bottomley et al., "A review of 1H NMR
    # relaxation in pathology", Med Phys 1987;14:1). A chronic infarct cavity (encephalomalacia) holds
    # fluid close to CSF with some debris: T1 and T2 a little below CSF, so FLAIR suppresses it nearly like
    # CSF; its gliotic rim is FLAIR-bright like a WMH. Vasogenic oedema (extracellular water in WM) has T2
    # about twice WM's; viable tumour is cellular (moderately long T1/T2) and, behind a broken blood-brain
    # barrier, takes up gadolinium like choroid plexus; the necrotic core is fluid-like and not perfused.
    "infarct": Relaxation(3000.0, 3400.0, 700.0, 650.0, 300.0, 0.95),
    "gliosis": Relaxation(1250.0, 1550.0, 140.0, 130.0, 65.0, 0.82),
    "enhancing": Relaxation(1250.0, 1650.0, 110.0, 105.0, 50.0, 0.85, gd_mM=0.4),
    "necrosis": Relaxation(2400.0, 2900.0, 350.0, 330.0, 100.0, 0.92),
    "oedema": Relaxation(1200.0, 1550.0, 160.0, 150.0, 70.0, 0.84),
}
# T2* at 1.5 T is about 1.3x the 3 T value in brain (Peters et al., MRI 2007), never above T2.
T2STAR_15_OVER_30 = 1.3

# CT at 120 kVp (HU ranges drawn uniformly): soft tissue and bone values from standard radiology tables
# (e.g. Hounsfield-unit tables in Brant & Helms, Fundamentals of Diagnostic Radiology; Schneider et al.,
# PMB 1996;41:111 for bone). Grey/white contrast about 10-15 HU in adults.
CT_HU_120: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0), "fat": (-100.0, -70.0), "muscle": (40.0, 55.0), "bone": (1100.0, 1800.0),
    "marrow": (300.0, 700.0), "csf": (2.0, 12.0), "gm": (35.0, 42.0), "mtl": (35.0, 42.0),
    "deep_gm": (32.0, 40.0), "wm": (22.0, 30.0), "lesion": (15.0, 24.0), "vessel": (40.0, 60.0),
    "choroid": (30.0, 45.0),
    # Pathology, unenhanced: chronic infarct cavities approach CSF density, gliosis and vasogenic oedema are
    # hypodense to WM, cellular tumour is iso- to hyperdense to grey matter, necrosis hypodense (same tables).
    "infarct": (2.0, 12.0), "gliosis": (15.0, 24.0), "enhancing": (32.0, 45.0), "necrosis": (8.0, 18.0),
    "oedema": (14.0, 22.0),
}
# Relative change of HU per 20 kV below 120 kVp: bone attenuates relatively more at low photon energy
# (photoelectric effect of calcium, NIST XCOM mass attenuation coefficients); soft tissue is nearly flat.
CT_KVP_SLOPE: dict[str, float] = {"bone": 0.10, "marrow": 0.07, "fat": 0.03}

# PET uptake (ranges drawn uniformly). FDG in SUV: cortex 6-10, deep grey 6-9, WM 2-3, CSF < 1
# (Phelps et al., Ann Neurol 1979; Berti et al., Semin Nucl Med 2014); non-brain tissue about 0.5-1.5.
FDG_WM_SUV = (2.2, 2.8)
FDG_GREY_WHITE = (2.8, 3.2)  # cortex/WM at the reference age
FDG_REFERENCE_AGE = 40.0
FDG_DECLINE_PER_DECADE = (0.05, 0.08)  # cortical decline with age (Kalpouzos et al., Neurobiol Aging 2009)
FDG_OTHER_SUV: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "fat": (0.3, 0.5), "muscle": (0.8, 1.2), "bone": (0.4, 0.7), "marrow": (0.9, 1.3),
    "csf": (0.3, 0.6), "vessel": (1.5, 2.0), "choroid": (1.5, 2.5),
}
# Florbetapir SUVR (cerebellar grey reference): negative cortex 1.0-1.1, positive 1.3-1.6, WM 1.5-2x a
# negative cortex (Clark et al., JAMA 2011;305:275; Clark et al., Lancet Neurol 2012;11:669).
AV45_NEG_CORTEX = (1.0, 1.1)
AV45_POS_CORTEX = (1.3, 1.6)
AV45_WM_OVER_NEG_CORTEX = (1.5, 1.9)
AV45_OTHER_SUVR: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "fat": (0.3, 0.5), "muscle": (0.4, 0.6), "bone": (0.4, 0.6), "marrow": (0.7, 1.0),
    "csf": (0.2, 0.4), "vessel": (0.9, 1.1), "choroid": (0.9, 1.1),
}
# Flortaucipir SUVR: normal cortex 1.0-1.2, medial temporal focus in positives (Braak I-IV), off-target
# basal ganglia and choroid plexus (Johnson et al., Ann Neurol 2016;79:110; Lee et al., NeuroImage 2018).
TAU_CORTEX = (1.0, 1.15)
TAU_WM = (0.85, 1.0)
TAU_DEEP_GM = (1.3, 1.6)
TAU_MTL_POSITIVE = (1.6, 2.6)
TAU_OTHER_SUVR: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "fat": (0.4, 0.6), "muscle": (0.6, 0.8), "bone": (0.6, 0.8), "marrow": (0.8, 1.1),
    "csf": (0.3, 0.5), "vessel": (1.0, 1.2), "choroid": (1.6, 2.4),
}


def amyloid_probability(age: float) -> float:
    """Prevalence of amyloid positivity rising with age (shape of Jansen et al., JAMA 2015;313:1924)."""
    return 1.0 / (1.0 + math.exp(-(age - 83.0) / 7.0))


@dataclass(frozen=True)
class PhantomSubject:
    """One simulated person: demographics and the tissue values every image of the subject shares."""

    age: float
    sex: str
    mri_factors: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # T1, T2, T2*, PD
    ct_hu: dict[str, float] = field(default_factory=dict)  # at 120 kVp
    fdg_suv: dict[str, float] = field(default_factory=dict)  # at 45 min uptake
    av45_suvr: dict[str, float] = field(default_factory=dict)
    tau_suvr: dict[str, float] = field(default_factory=dict)
    amyloid_positive: bool = False
    tau_positive: bool = False

    def metadata(self) -> SubjectMetadata:
        """The dataset.json subject entry."""
        return SubjectMetadata(age=round(float(self.age), 1), sex=self.sex)


def _draw(rng: np.random.Generator | None, low: float, high: float) -> float:
    return 0.5 * (low + high) if rng is None else float(rng.uniform(low, high))


def draw_subject(rng: np.random.Generator | None, age: float | None = None, sex: str | None = None) -> PhantomSubject:
    """Draw a subject; ``rng=None`` gives the nominal (mid-range, amyloid-negative) subject."""
    if age is None:
        age = 55.0 if rng is None else float(rng.uniform(20.0, 90.0))
    if sex is None:
        sex = "F" if rng is None else str(rng.choice(["M", "F"]))
    # CSF is nearly pure water: its relaxation varies little between people (+-3%), tissues by +-7%.
    mri = {
        t: (_draw(rng, 0.93, 1.07), _draw(rng, 0.93, 1.07), _draw(rng, 0.92, 1.08), _draw(rng, 0.97, 1.03))
        if t != "csf" else (_draw(rng, 0.97, 1.03), _draw(rng, 0.95, 1.05), _draw(rng, 0.95, 1.05), 1.0)
        for t in TISSUES
    }
    ct = {t: _draw(rng, *CT_HU_120[t]) for t in TISSUES}
    ct["mtl"] = ct["gm"]

    fdg = {t: _draw(rng, *r) for t, r in FDG_OTHER_SUV.items()}
    fdg["wm"] = _draw(rng, *FDG_WM_SUV)
    decline = 1.0 - _draw(rng, *FDG_DECLINE_PER_DECADE) * (age - FDG_REFERENCE_AGE) / 10.0
    fdg["gm"] = fdg["mtl"] = fdg["wm"] * _draw(rng, *FDG_GREY_WHITE) * max(decline, 0.5)
    fdg["deep_gm"] = fdg["gm"] * _draw(rng, 0.85, 0.95)
    fdg["lesion"] = fdg["wm"] * _draw(rng, 0.75, 0.9)

    amyloid = False if rng is None else bool(rng.random() < amyloid_probability(age))
    av45 = {t: _draw(rng, *r) for t, r in AV45_OTHER_SUVR.items()}
    negative_cortex = _draw(rng, *AV45_NEG_CORTEX)
    av45["wm"] = negative_cortex * _draw(rng, *AV45_WM_OVER_NEG_CORTEX)
    av45["gm"] = _draw(rng, *AV45_POS_CORTEX) if amyloid else negative_cortex
    av45["mtl"] = 0.5 * (av45["gm"] + negative_cortex)  # medial temporal cortex is spared relatively
    av45["deep_gm"] = av45["gm"] * _draw(rng, 1.0, 1.1)  # striatum follows cortex in positives
    av45["lesion"] = av45["wm"] * _draw(rng, 0.8, 0.9)  # lower binding in damaged WM

    # Tau follows amyloid (Braak staging): mostly in amyloid-positive subjects, rarely without (PART).
    tau_positive = False if rng is None else bool(rng.random() < (0.6 if amyloid else 0.04 * max(age - 60.0, 0.0) / 10.0))
    tau = {t: _draw(rng, *r) for t, r in TAU_OTHER_SUVR.items()}
    tau["gm"] = _draw(rng, *TAU_CORTEX) + (_draw(rng, 0.0, 0.3) if tau_positive else 0.0)
    tau["mtl"] = _draw(rng, *TAU_MTL_POSITIVE) if tau_positive else tau["gm"] * _draw(rng, 1.0, 1.1)
    tau["wm"] = _draw(rng, *TAU_WM)
    tau["deep_gm"] = _draw(rng, *TAU_DEEP_GM)
    tau["lesion"] = tau["wm"]
    return PhantomSubject(float(age), sex, mri, ct, fdg, av45, tau, amyloid, tau_positive)


def mri_parameters(subject: PhantomSubject, field_strength: float) -> dict[str, np.ndarray]:
    """Per-tissue T1, T2, T2* (ms), PD, chi and Gd arrays (in ALL_TISSUES order) at any field strength.

    Between and beyond 1.5 and 3 T, times follow a power law in B0 fitted to the two tabulated fields.
    """
    b = float(field_strength) / 1.5
    out: dict[str, list[float]] = {k: [] for k in ("t1", "t2", "t2s", "pd", "chi", "gd")}
    for t in ALL_TISSUES:
        r = RELAXATION[t]
        f1, f2, f2s, fpd = subject.mri_factors.get(t, (1.0, 1.0, 1.0, 1.0))
        t2s_15 = min(r.t2s_30 * T2STAR_15_OVER_30, r.t2_15)
        out["t1"].append(f1 * r.t1_15 * b ** math.log2(r.t1_30 / r.t1_15))
        out["t2"].append(f2 * r.t2_15 * b ** math.log2(r.t2_30 / r.t2_15))
        out["t2s"].append(f2s * t2s_15 * b ** math.log2(r.t2s_30 / t2s_15))
        out["pd"].append(fpd * r.pd)
        out["chi"].append(r.chi)
        out["gd"].append(r.gd_mM)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    arrays["t2s"] = np.minimum(arrays["t2s"], arrays["t2"])
    return arrays


def ct_values(subject: PhantomSubject, kvp: float) -> np.ndarray:
    """Per-tissue HU (ALL_TISSUES order) at a tube voltage; lower kVp raises bone HU.

    A pathology tissue the subject has no drawn value for takes the middle of its range."""
    shift = (120.0 - float(kvp)) / 20.0
    hu = [subject.ct_hu[t] if t in subject.ct_hu else 0.5 * sum(CT_HU_120[t]) for t in ALL_TISSUES]
    return np.asarray([v * (1.0 + CT_KVP_SLOPE.get(t, 0.0) * shift) for t, v in zip(ALL_TISSUES, hu)])
