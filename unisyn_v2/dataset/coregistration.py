"""Rigid co-registration of a case's images to its reference image, resampling onto the reference grid,
and an automatic brain mask (used by ``unisyn_convert_bids``).

Registration (:func:`register_rigid`): SimpleITK's registration framework, Mattes mutual information
(works across MRI contrasts, CT and PET), a 6-parameter Euler transform about the reference's centre,
regular-step gradient descent with parameter scales from physical shifts, a multi-resolution pyramid
(shrink 4-2-1 with Gaussian smoothing 2-1-0 voxels; coarser levels are dropped where they would leave
fewer than 16 voxels along an axis). The start is the best, by the metric, of three centred
initialisations: the headers' alignment (same session: scanner coordinates already close), the grid
centres aligned and the intensity centres of mass aligned (``CenteredTransformInitializer`` GEOMETRY
and MOMENTS; far apart fields of view). The transform maps reference (fixed) points to moving-image
points, ITK's convention, and is written as a ``.tfm`` file that SimpleITK/ITK/ANTs read.

Automatic brain mask (:func:`auto_brain_mask`), the documented method: a foreground threshold (MRI and
PET: Otsu; CT: soft tissue 0-100 HU, which leaves the skull out), eroded by 4 mm to cut the thin links
between brain and scalp, the largest connected component, dilated back by 4 mm inside the foreground,
holes filled. It suits skull-on T1w and CT and PET-like images; it is a heuristic, not a skull-stripping
tool: a mask from one (SynthStrip, HD-BET, FSL BET) in a derivatives folder is better where it exists.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from unisyn_v2.io_utils import replace_atomic

logger = logging.getLogger(__name__)

#: coarsest pyramid level keeps at least this many voxels along every axis
MIN_LEVEL_VOXELS = 16
#: metric samples (voxels of the fixed image) per evaluation at the finest level; all voxels below it
MAX_METRIC_SAMPLES = 200_000
MASK_EROSION_MM = 4.0


@dataclass(frozen=True)
class RegistrationResult:
    """A rigid transform (reference point -> moving point) and the metric at the headers' alignment and after."""

    transform: sitk.Euler3DTransform
    metric_before: float  # Mattes MI (negative; lower is better) with the identity (header) alignment
    metric_after: float
    initialisation: str  # header | geometry | moments
    iterations: int
    stop_condition: str

    def parameters(self) -> dict[str, list[float]]:
        """Rotation angles (degrees, about x, y, z), translation (mm) and the centre (mm) for reports."""
        values = self.transform.GetParameters()
        return {"rotation_deg": [round(math.degrees(v), 4) for v in values[:3]],
                "translation_mm": [round(v, 4) for v in values[3:]],
                "centre_mm": [round(v, 4) for v in self.transform.GetCenter()]}


def _as_float(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(image, sitk.sitkFloat32)


def _grid_centre(image: sitk.Image) -> tuple[float, float, float]:
    size = image.GetSize()
    return image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in size])


def _pyramid(fixed: sitk.Image) -> tuple[list[int], list[float]]:
    shrinks = [f for f in (4, 2) if min(fixed.GetSize()) / f >= MIN_LEVEL_VOXELS] + [1]
    sigmas = [{4: 2.0, 2: 1.0, 1: 0.0}[f] for f in shrinks]
    return shrinks, sigmas


def _method(fixed: sitk.Image, seed: int, threads: int | None, bins: int = 32) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    voxels = int(np.prod(fixed.GetSize()))
    if voxels > MAX_METRIC_SAMPLES:  # regular sampling with a fixed seed: the same result every run
        method.SetMetricSamplingStrategy(method.REGULAR)
        method.SetMetricSamplingPercentage(MAX_METRIC_SAMPLES / voxels, seed)
    else:
        method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    if threads is not None:
        method.SetNumberOfThreads(int(threads))
    return method


def metric_value(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, seed: int = 0,
                 threads: int | None = None) -> float:
    """Mattes mutual information (negative; lower = better aligned) of ``moving`` seen through ``transform``."""
    method = _method(fixed, seed, threads)
    method.SetInitialTransform(sitk.Transform(transform), inPlace=False)
    return float(method.MetricEvaluate(_as_float(fixed), _as_float(moving)))


def register_rigid(fixed: sitk.Image, moving: sitk.Image, seed: int = 0, threads: int | None = None,
                   iterations: int = 200) -> RegistrationResult:
    """Rigidly register ``moving`` to ``fixed`` (method in the module docstring)."""
    fixed_f, moving_f = _as_float(fixed), _as_float(moving)
    centre = _grid_centre(fixed)
    header = sitk.Euler3DTransform()
    header.SetCenter(centre)
    candidates = {"header": header}
    for name, mode in (("geometry", sitk.CenteredTransformInitializerFilter.GEOMETRY),
                       ("moments", sitk.CenteredTransformInitializerFilter.MOMENTS)):
        try:
            candidates[name] = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed_f, moving_f,
                                                                                      sitk.Euler3DTransform(), mode))
        except RuntimeError as error:  # an empty image has no centre of mass
            logger.debug("initialisation %s failed: %s", name, error)
    scores = {name: metric_value(fixed_f, moving_f, t, seed, threads) for name, t in candidates.items()}
    start = min(scores, key=lambda name: (scores[name], name != "header"))  # ties: trust the headers
    method = _method(fixed, seed, threads)
    spacing = min(fixed.GetSpacing())
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=spacing, minStep=1e-4 * spacing,
                                                    numberOfIterations=iterations, relaxationFactor=0.8,
                                                    gradientMagnitudeTolerance=1e-10)
    method.SetOptimizerScalesFromPhysicalShift()
    shrinks, sigmas = _pyramid(fixed)
    method.SetShrinkFactorsPerLevel(shrinks)
    method.SetSmoothingSigmasPerLevel(sigmas)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    transform = sitk.Euler3DTransform(candidates[start])
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed_f, moving_f)
    before = metric_value(fixed_f, moving_f, header, seed, threads)
    after = metric_value(fixed_f, moving_f, transform, seed, threads)
    if after > before:  # the optimiser ended worse than where the headers put it: keep the headers
        logger.info("registration ended at a worse metric (%.4f) than the headers' alignment (%.4f); keeping the "
                    "headers' alignment", after, before)
        transform, after, start = sitk.Euler3DTransform(header), before, "header (optimiser result rejected)"
    return RegistrationResult(transform, before, after, start, int(method.GetOptimizerIteration()),
                              method.GetOptimizerStopConditionDescription())


def max_displacement_mm(transform: sitk.Transform, reference: sitk.Image, mask: np.ndarray | None = None) -> float:
    """Largest distance a point of the reference's region moves under ``transform`` (mm).

    The region is the bounding box of ``mask`` (z, y, x) or the whole grid; a rigid displacement is convex in
    the point, so its maximum over a box is at one of the 8 corners.
    """
    size = reference.GetSize()
    if mask is not None and mask.any():
        where = np.argwhere(mask)
        low, high = where.min(axis=0)[::-1], where.max(axis=0)[::-1]  # (x, y, z)
    else:
        low, high = np.zeros(3, int), np.array(size) - 1
    worst = 0.0
    for corner in np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1).T:
        point = reference.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        moved = transform.TransformPoint(point)
        worst = max(worst, float(np.linalg.norm(np.subtract(moved, point))))
    return worst


def resample_onto(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
                  nearest: bool = False, default_value: float = 0.0) -> sitk.Image:
    """``moving`` on ``reference``'s grid (linear, or nearest neighbour for masks), through ``transform``."""
    return sitk.Resample(moving, reference, transform or sitk.Transform(3, sitk.sitkIdentity),
                         sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, float(default_value),
                         moving.GetPixelID())


def write_transform(transform: sitk.Transform, path: Path) -> Path:
    """Write a ``.tfm`` atomically (temp file beside it, renamed)."""
    def write(temp: Path) -> None:
        try:
            sitk.WriteTransform(transform, str(temp))
        except RuntimeError as error:
            raise OSError(f"{path}: cannot write the transform ({str(error).strip().splitlines()[-1]})") from None
    return replace_atomic(Path(path), write)


def _ball(image: sitk.Image, radius_mm: float) -> list[int]:
    return [max(1, int(round(radius_mm / s))) for s in image.GetSpacing()]


def auto_brain_mask(image: sitk.Image, family: str) -> np.ndarray:
    """A brain mask (uint8, z, y, x) from one image of the case (method in the module docstring)."""
    image = _as_float(image)
    if family == "CT":
        foreground = sitk.BinaryThreshold(image, 0.0, 100.0, 1, 0)
    else:
        foreground = sitk.OtsuThreshold(image, 0, 1)
    radius = _ball(image, MASK_EROSION_MM)
    core = sitk.BinaryErode(foreground, radius, sitk.sitkBall, 0, 1)
    components = sitk.ConnectedComponent(core)
    sizes = np.bincount(sitk.GetArrayViewFromImage(components).ravel())
    if sizes.size < 2:  # erosion removed everything: fall back to the foreground itself
        largest = foreground
    else:
        largest = sitk.Cast(components == int(np.argmax(sizes[1:]) + 1), sitk.sitkUInt8)
        largest = sitk.BinaryDilate(largest, radius, sitk.sitkBall, 0, 1) * sitk.Cast(foreground, sitk.sitkUInt8)
    filled = sitk.BinaryFillhole(sitk.Cast(largest, sitk.sitkUInt8), fullyConnected=False, foregroundValue=1)
    return sitk.GetArrayFromImage(filled).astype(np.uint8)
