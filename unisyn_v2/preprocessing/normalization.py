"""Invertible intensity normalisation, one scheme per modality family (docs/ARCHITECTURE.md, intensity contract).

Synthesis must undo the *target* normalisation at prediction time, so each image's parameters are recorded
(:class:`NormalizationParameters`, JSON) and each scheme has defaults for a target that was never acquired.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from unisyn_v2.metadata.modalities import ModalityFamily

logger = logging.getLogger(__name__)

#: Scale of a synthesised MRI: 1.0 in normalised units (the 99.5th brain percentile) is written as 1000.
MRI_OUTPUT_SCALE = 1000.0


class NormalizationError(ValueError):
    """Raised for invalid normalisation parameters, inputs or scheme names."""


@dataclass(frozen=True)
class NormalizationParameters:
    """What was applied to one image: the scheme name and its fitted constants (floats only, for JSON)."""

    scheme: str
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form stored in case properties and plans."""
        return {"scheme": self.scheme, "values": {k: float(v) for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationParameters:
        """Rebuild from :meth:`to_dict` output; rejects anything that is not ``{scheme, values}``."""
        try:
            if not isinstance(data["scheme"], str):
                raise TypeError
            return cls(data["scheme"], {str(k): float(v) for k, v in data.get("values", {}).items()})
        except (TypeError, ValueError, KeyError, AttributeError):
            raise NormalizationError(
                f"normalisation parameters must be {{'scheme': str, 'values': {{name: number}}}}, got {data!r}; "
                "pass the output of NormalizationParameters.to_dict()"
            ) from None

    def get(self, key: str) -> float:
        """A recorded value; a missing key names the scheme and the keys it has."""
        if key not in self.values:
            msg = f"normalisation parameters of scheme {self.scheme!r} lack {key!r} (have {sorted(self.values)})"
            raise NormalizationError(msg + "; pass parameters produced by this scheme's fit()")
        return self.values[key]


def _check_mask(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Boolean selection of finite voxels inside ``mask`` (all finite voxels when mask is None)."""
    finite = np.isfinite(image)
    if mask is None:
        return finite
    if mask.shape != image.shape:
        raise NormalizationError(f"mask shape {mask.shape} != image shape {image.shape}; pass this image's brain mask")
    return finite & (mask > 0)


def _is_suv(unit: str | None) -> bool:
    return unit is not None and str(unit).strip().upper() == "SUV"


class IntensityNormalizer(ABC):
    """Fit parameters on an image, apply them, and undo them on a (predicted) normalised array."""

    scheme: ClassVar[str]
    #: Raw intensity of empty space, used to fill outside the crop box when exporting.
    background_value: ClassVar[float] = 0.0
    #: The lowest value the modality can physically take in :meth:`output_unit` (magnitude MRI and activity
    #: concentrations are never negative; CT stops at the air floor of the HU storage range).
    physical_minimum: ClassVar[float] = 0.0

    def limit_to_physical(self, array: np.ndarray) -> np.ndarray:
        """A synthesised image (in :meth:`output_unit`) clipped to what the modality allows: a regression
        undershoots at sharp edges (the scalp ring of a PET, air next to bone), which no scanner produces."""
        return np.maximum(np.asarray(array, dtype=np.float32), np.float32(self.physical_minimum))

    @abstractmethod
    def fit(self, image: np.ndarray, mask: np.ndarray | None = None, **kwargs: Any) -> NormalizationParameters:
        """Parameters for this image (mask: brain mask, nonzero = brain)."""

    @abstractmethod
    def forward(self, image: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """Normalised float32 copy of ``image``."""

    @abstractmethod
    def inverse(self, normalised: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """Float32 image in the unit given by :meth:`output_unit`."""

    @abstractmethod
    def default_target_parameters(self) -> NormalizationParameters | None:
        """Parameters for a synthesised target when no image of its modality exists."""

    @abstractmethod
    def output_unit(self, params: NormalizationParameters) -> str:
        """Unit of :meth:`inverse`'s result, for the prediction sidecar."""

    def init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments, so plans can rebuild this normaliser with :func:`build_normalizer`."""
        return {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}

    def _check_scheme(self, params: NormalizationParameters) -> None:
        if params.scheme != self.scheme:
            raise NormalizationError(
                f"{type(self).__name__} needs parameters of scheme {self.scheme!r}, got {params.scheme!r}; "
                f"build the normaliser with build_normalizer({params.scheme!r}, ...)"
            )


class AffineNormalizer(IntensityNormalizer):
    """A normaliser that is one linear map: subclasses give its constants in :meth:`affine`."""

    @abstractmethod
    def affine(self, params: NormalizationParameters) -> tuple[float, float, float]:
        """``(offset, forward_scale, inverse_scale)``: forward is (x - offset) / forward_scale, inverse
        y * inverse_scale + offset (the scales differ only where the inverse returns another unit)."""

    def forward(self, image: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """Normalised float32 copy of ``image``."""
        self._check_scheme(params)
        offset, scale, _ = self.affine(params)
        out = np.array(image, dtype=np.float32)
        out -= np.float32(offset)
        out /= np.float32(scale)
        return out

    def inverse(self, normalised: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """Float32 image in the unit given by :meth:`output_unit`."""
        self._check_scheme(params)
        offset, _, scale = self.affine(params)
        out = np.array(normalised, dtype=np.float32)
        out *= np.float32(scale)
        out += np.float32(offset)
        return out


class CTNormalizer(AffineNormalizer):
    """The whole HU storage window mapped linearly to [0, 1] (the CT scheme before ``ct_brain_window``;
    still valid in plans, e.g. for body CT where no brain window applies)."""

    scheme = "ct_window"
    background_value = -1000.0
    physical_minimum = -1024.0

    def __init__(self, clip_low: float = -1024.0, clip_high: float = 3071.0) -> None:
        if not clip_high > clip_low:
            raise NormalizationError(f"clip_high ({clip_high}) must exceed clip_low ({clip_low}); widen the HU window")
        self.clip_low = float(clip_low)
        self.clip_high = float(clip_high)

    def fit(self, image: np.ndarray, mask: np.ndarray | None = None, **kwargs: Any) -> NormalizationParameters:
        return self.default_target_parameters()

    def default_target_parameters(self) -> NormalizationParameters:
        return NormalizationParameters(self.scheme, {"clip_low": self.clip_low, "clip_high": self.clip_high})

    def affine(self, params: NormalizationParameters) -> tuple[float, float, float]:
        low, high = params.get("clip_low"), params.get("clip_high")
        return low, high - low, high - low

    def forward(self, image: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """Clip to the window, then map it to [0, 1]."""
        return super().forward(np.clip(image, params.get("clip_low"), params.get("clip_high")), params)

    def inverse(self, normalised: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """HU, after clipping to [0, 1]: forward never produces values outside the window."""
        return super().inverse(np.clip(normalised, 0.0, 1.0), params)

    def output_unit(self, params: NormalizationParameters) -> str:
        return "HU"


class CTBrainWindowNormalizer(IntensityNormalizer):
    """HU -> a piecewise-linear scale that gives the brain most of it (the default CT scheme).

    Knots: ``clip_low -> -1``, ``window_low -> 0``, ``window_high -> 1``, ``clip_high -> 2``. Why: brain
    tissue spans about 60 HU of the 4095 HU storage range, so under one linear map grey/white contrast
    (about 10 HU) is 0.25% of the network's scale: a CT source barely shows anatomy and a CT target must
    be regressed to 1e-3. The window (from the fingerprint's brain percentiles) gives the brain about 50x
    that resolution, while air, fat and bone keep their own compressed segments, so the map stays
    monotone and its inverse exact (to float32) over the whole 12-bit range.
    """

    scheme = "ct_brain_window"
    background_value = -1000.0
    physical_minimum = -1024.0
    NORMALISED_KNOTS: ClassVar[tuple[float, float, float, float]] = (-1.0, 0.0, 1.0, 2.0)

    def __init__(self, window_low: float = -20.0, window_high: float = 100.0, clip_low: float = -1024.0,
                 clip_high: float = 3071.0) -> None:
        if not clip_low < window_low < window_high < clip_high:
            raise NormalizationError(
                f"need clip_low < window_low < window_high < clip_high, got {clip_low}, {window_low}, {window_high}, "
                f"{clip_high}; the brain window must lie inside the HU storage range"
            )
        self.window_low = float(window_low)
        self.window_high = float(window_high)
        self.clip_low = float(clip_low)
        self.clip_high = float(clip_high)

    def fit(self, image: np.ndarray, mask: np.ndarray | None = None, **kwargs: Any) -> NormalizationParameters:
        return self.default_target_parameters()

    def default_target_parameters(self) -> NormalizationParameters:
        return NormalizationParameters(self.scheme, self.init_kwargs())

    def knots(self, params: NormalizationParameters) -> tuple[np.ndarray, np.ndarray]:
        """(HU knots, normalised knots), both increasing."""
        self._check_scheme(params)
        hu = np.array([params.get(k) for k in ("clip_low", "window_low", "window_high", "clip_high")], np.float64)
        if not np.all(np.diff(hu) > 0):
            raise NormalizationError(f"CT window knots {hu.tolist()} are not increasing; refit the plans")
        return hu, np.array(self.NORMALISED_KNOTS, np.float64)

    def forward(self, image: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """HU -> normalised (values outside the storage range are clipped to it)."""
        hu, normalised = self.knots(params)
        return np.interp(np.asarray(image, dtype=np.float32), hu, normalised).astype(np.float32)

    def inverse(self, normalised: np.ndarray, params: NormalizationParameters) -> np.ndarray:
        """Normalised -> HU (values beyond the end knots are clipped, as forward never produces them)."""
        hu, knots = self.knots(params)
        return np.interp(np.asarray(normalised, dtype=np.float32), knots, hu).astype(np.float32)

    def output_unit(self, params: NormalizationParameters) -> str:
        return "HU"


class PETNormalizer(AffineNormalizer):
    """SUV / dataset_scale; any other unit is first divided by the brain mean (SUVR).

    Values: ``dataset_scale``, ``brain_mean`` (1.0 in SUV mode) and ``suvr`` (1.0 when the output
    unit is SUVR, else 0.0). The inverse is ``x * dataset_scale`` in both modes, so it returns SUV
    for SUV inputs and SUVR otherwise; ``brain_mean`` converts SUVR back to the source unit if needed.
    Without a mask the brain is the voxels above 10% of the 99th percentile of positive voxels,
    which drops scatter and background counts that would bias a plain ``> 0`` mean low.
    """

    scheme = "pet_suv"
    background_value = 0.0
    BACKGROUND_FRACTION: ClassVar[float] = 0.1

    def __init__(self, dataset_scale: float, unit: str | None = None) -> None:
        if not (isinstance(dataset_scale, (int, float)) and np.isfinite(dataset_scale) and dataset_scale > 0):
            msg = f"dataset_scale must be a positive finite number, got {dataset_scale!r}"
            raise NormalizationError(msg + "; use the plans' PET constant (a high SUV percentile of training data)")
        self.dataset_scale = float(dataset_scale)
        self.unit = unit

    def _brain_mean(self, image: np.ndarray, mask: np.ndarray | None) -> float:
        select = _check_mask(image, mask)
        if mask is None:
            positive = image[select & (image > 0)]
            if positive.size:
                select = select & (image > self.BACKGROUND_FRACTION * np.percentile(positive, 99.0))
        values = image[select]
        mean = float(values.mean(dtype=np.float64)) if values.size else float("nan")
        if not (np.isfinite(mean) and mean > 0):
            where = "the mask" if mask is not None else "voxels above background"
            msg = f"PET brain mean must be positive, got {mean} over {values.size} voxels of {where}"
            raise NormalizationError(msg + "; check the brain mask and that the PET is not empty, or pass unit='SUV'")
        return mean

    def fit(self, image: np.ndarray, mask: np.ndarray | None = None, **kwargs: Any) -> NormalizationParameters:
        """``unit`` kwarg (image metadata) overrides the constructor's dataset unit."""
        unit = kwargs.get("unit", self.unit)
        suv = _is_suv(unit)
        mean = 1.0 if suv else self._brain_mean(np.asarray(image), mask)
        logger.debug("PET unit %s: brain mean %.4g, output %s", unit, mean, "SUV" if suv else "SUVR")
        values = {"dataset_scale": self.dataset_scale, "brain_mean": mean, "suvr": 0.0 if suv else 1.0}
        return NormalizationParameters(self.scheme, values)

    def default_target_parameters(self) -> NormalizationParameters:
        suvr = 0.0 if _is_suv(self.unit) else 1.0
        values = {"dataset_scale": self.dataset_scale, "brain_mean": 1.0, "suvr": suvr}
        return NormalizationParameters(self.scheme, values)

    def affine(self, params: NormalizationParameters) -> tuple[float, float, float]:
        scale = params.get("dataset_scale")
        return 0.0, params.get("brain_mean") * scale, scale

    def output_unit(self, params: NormalizationParameters) -> str:
        return "SUVR" if params.get("suvr") else "SUV"


class MRINormalizer(AffineNormalizer):
    """Per-image robust percentiles in the brain -> [0, 1], unclipped so the inverse is exact.

    MRI has no absolute unit, so a synthesised MRI is written in "normalised MRI units":
    1000 x (1.0 = the 99.5th brain percentile, 0 = the 0.5th).
    """

    scheme = "mri_percentile"
    background_value = 0.0

    def __init__(self, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> None:
        if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
            msg = f"need 0 <= lower_percentile < upper_percentile <= 100, got ({lower_percentile}, {upper_percentile})"
            raise NormalizationError(msg + "; use e.g. (0.5, 99.5)")
        self.lower_percentile = float(lower_percentile)
        self.upper_percentile = float(upper_percentile)

    def fit(self, image: np.ndarray, mask: np.ndarray | None = None, **kwargs: Any) -> NormalizationParameters:
        """Percentiles inside ``mask``; without one, over nonzero finite voxels."""
        image = np.asarray(image)
        select = _check_mask(image, mask)
        if mask is None:
            select &= image != 0
        voxels = image[select]
        if voxels.size == 0:
            where = "brain-mask" if mask is not None else "nonzero"
            raise NormalizationError(f"no {where} finite voxels to fit MRI percentiles; check mask and image overlap")
        p_low, p_high = (float(v) for v in np.percentile(voxels, [self.lower_percentile, self.upper_percentile]))
        if not p_high - p_low > 1e-6 * max(1.0, abs(p_high)):
            msg = f"MRI percentiles p{self.lower_percentile}={p_low}, p{self.upper_percentile}={p_high} coincide"
            raise NormalizationError(msg + " (constant image in the mask); check the image and the brain mask")
        values = {"p_low": p_low, "p_high": p_high, "fixed_scale": 0.0, **self.init_kwargs()}
        return NormalizationParameters(self.scheme, values)

    def default_target_parameters(self) -> NormalizationParameters:
        values = {"p_low": 0.0, "p_high": MRI_OUTPUT_SCALE, "fixed_scale": 1.0, **self.init_kwargs()}
        return NormalizationParameters(self.scheme, values)

    def affine(self, params: NormalizationParameters) -> tuple[float, float, float]:
        p_low, p_high = params.get("p_low"), params.get("p_high")
        return p_low, p_high - p_low, p_high - p_low

    def output_unit(self, params: NormalizationParameters) -> str:
        return "normalised MRI units" if params.values.get("fixed_scale") else "source MRI units"


NORMALIZER_REGISTRY: dict[str, type[IntensityNormalizer]] = {
    cls.scheme: cls for cls in (CTBrainWindowNormalizer, CTNormalizer, PETNormalizer, MRINormalizer)
}
#: Default scheme of each modality family (the intensity contract).
FAMILY_SCHEMES: dict[str, str] = {
    ModalityFamily.CT: "ct_brain_window", ModalityFamily.PET: "pet_suv", ModalityFamily.MRI: "mri_percentile"
}


def build_normalizer(scheme: str, kwargs: dict[str, Any] | None = None) -> IntensityNormalizer:
    """Instantiate a registered scheme from plans (scheme name + constructor kwargs)."""
    try:
        cls = NORMALIZER_REGISTRY[scheme]
    except KeyError:
        raise NormalizationError(
            f"unknown normalisation scheme {scheme!r}; known schemes: {', '.join(sorted(NORMALIZER_REGISTRY))} "
            "(register a new IntensityNormalizer subclass in NORMALIZER_REGISTRY)"
        ) from None
    kwargs = dict(kwargs or {})
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        msg = f"cannot build {scheme!r} with kwargs {kwargs}: {exc}; signature: {cls.__name__}{inspect.signature(cls)}"
        raise NormalizationError(msg) from None
    return cls(**kwargs)


def normalizer_for_family(family: ModalityFamily | str, **kwargs: Any) -> IntensityNormalizer:
    """The default normaliser of a modality family (PET needs ``dataset_scale``)."""
    scheme = FAMILY_SCHEMES.get(str(family).upper())
    if scheme is None:
        raise NormalizationError(f"unknown modality family {family!r}; known families: {', '.join(FAMILY_SCHEMES)}")
    return build_normalizer(scheme, kwargs)
