"""Image reading and writing that keeps the full geometry (spacing, origin, direction).

Arrays are (z, y, x) as SimpleITK returns them; :class:`Geometry` keeps SimpleITK's (x, y, z) order so
that an output written with the input's geometry matches it exactly, oblique directions included.
"""

from __future__ import annotations

import errno
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from unisyn_v2.io_utils import IncompleteWriteError, commit_file, stage_file

READABLE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


class ImageReadError(ValueError):
    """An image file cannot be used (unreadable, not 3D, ...)."""


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image: shape (z, y, x); spacing, origin (x, y, z); direction row-major 3x3."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array order."""
        return (self.spacing_xyz[2], self.spacing_xyz[1], self.spacing_xyz[0])

    def matches(self, other: "Geometry", spacing_tol: float = 1e-3, origin_tol: float = 1e-2, direction_tol: float = 1e-3) -> bool:
        """Same grid within tolerances (float32 headers round-trip only approximately)."""
        return self.mismatch(other, spacing_tol, origin_tol, direction_tol) is None

    def mismatch(self, other: "Geometry", spacing_tol: float = 1e-3, origin_tol: float = 1e-2, direction_tol: float = 1e-3) -> str | None:
        """A description of the first difference, or None."""
        if self.shape_zyx != other.shape_zyx:
            return f"shape {self.shape_zyx} vs {other.shape_zyx}"
        if not np.allclose(self.spacing_xyz, other.spacing_xyz, rtol=0, atol=spacing_tol * max(self.spacing_xyz)):
            return f"spacing {self.spacing_xyz} vs {other.spacing_xyz}"
        if not np.allclose(self.origin_xyz, other.origin_xyz, rtol=0, atol=origin_tol * max(1.0, max(self.spacing_xyz))):
            return f"origin {self.origin_xyz} vs {other.origin_xyz}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_tol):
            return f"direction {self.direction} vs {other.direction}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "shape_zyx": list(self.shape_zyx),
            "spacing_xyz": list(self.spacing_xyz),
            "origin_xyz": list(self.origin_xyz),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Geometry":
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(int(v) for v in data["shape_zyx"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["spacing_xyz"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["origin_xyz"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["direction"]),
        )

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        """Geometry of a SimpleITK image."""
        size = image.GetSize()
        return cls(
            (int(size[2]), int(size[1]), int(size[0])),
            tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetDirection()),
        )


def read_geometry(path: Path) -> Geometry:
    """Read only the header of an image."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(f"{path}: cannot read the image header ({_first_line(error)})") from None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise ImageReadError(
            f"{path}: must be a 3D single-channel image (got {reader.GetDimension()}D with "
            f"{reader.GetNumberOfComponents()} component(s)); split 4D series into 3D volumes"
        )
    size = reader.GetSize()
    return Geometry(
        (int(size[2]), int(size[1]), int(size[0])),
        tuple(float(v) for v in reader.GetSpacing()),  # type: ignore[arg-type]
        tuple(float(v) for v in reader.GetOrigin()),  # type: ignore[arg-type]
        tuple(float(v) for v in reader.GetDirection()),
    )


def read_image(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image as float32 (z, y, x) with its geometry; scl_slope/inter are applied by the reader.

    NIfTI files are also checked for what SimpleITK lets pass silently: a truncated file (read as
    zeros), a zero voxel spacing (read as 1 mm) and scaled intensities that overflow float32.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageReadError(f"{path}: cannot read the image ({_first_line(error)}); is the file complete?") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: must be a 3D single-channel image (got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)); split 4D series into 3D volumes"
        )
    is_nifti = str(path).endswith((".nii", ".nii.gz"))
    if is_nifti:
        _check_nifti_file(Path(path))
    array = sitk.GetArrayFromImage(image)
    # Cast in float64 first so large integer types do not overflow or lose sign on the way.
    values = np.asarray(array, dtype=np.float64)
    if array.dtype.itemsize == 8 and array.dtype.kind in "iu" and values.size and np.abs(values).max() >= 2.0**53:
        raise ImageReadError(f"{path}: 64-bit integer intensities beyond +-2^53 cannot be read exactly; "
                             "save the image as float32 or int32")
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(np.float32)
    if is_nifti and not np.isfinite(out).all():  # the NIfTI reader zeroes stored NaN/inf: these come from scaling
        slope, inter = (image.GetMetaData(k) if image.HasMetaDataKey(k) else "?" for k in ("scl_slope", "scl_inter"))
        raise ImageReadError(f"{path}: intensities overflow float32 after the header scaling (scl_slope {slope}, "
                             f"scl_inter {inter}); fix the scaling in the header or store the data as float32")
    return out, Geometry.of(image)


def _check_nifti_file(path: Path) -> None:
    """Raise ImageReadError for a truncated NIfTI file or a zero voxel spacing in its header."""
    import nibabel

    try:
        image = nibabel.load(str(path))
        with nibabel.openers.ImageOpener(str(path)) as stream:  # unchecked: loading 'fixes' a zero pixdim to 1
            pixdim = type(image.header).from_fileobj(stream, check=False)["pixdim"][1:4]
        proxy = image.dataobj
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for a broken header
        raise ImageReadError(f"{path}: cannot read the NIfTI header ({error})") from None
    if np.any(np.asarray(pixdim, dtype=np.float64) == 0):
        raise ImageReadError(f"{path}: the header gives a zero voxel spacing (pixdim {list(map(float, pixdim))}); "
                             "fix the header (readers would silently assume 1 mm)")
    expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    if _stored_size(path, expected) < expected:
        raise ImageReadError(f"{path}: the file is truncated (holds less than the {expected} bytes its header "
                             "announces); copy or export it again")


def _stored_size(path: Path, expected: int) -> int:
    """Bytes of NIfTI data in the file (decompressed); the gzip trailer avoids a second pass when it agrees."""
    if not str(path).endswith(".gz"):
        return path.stat().st_size
    with open(path, "rb") as stream:
        stream.seek(-4, os.SEEK_END)
        if struct.unpack("<I", stream.read(4))[0] == expected % 2**32:
            return expected
    size = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                size += len(chunk)
    except (EOFError, OSError, zlib.error):
        return size
    return size


def count_nonfinite_voxels(path: Path) -> int:
    """NaN/inf voxels in a NIfTI file as stored.

    SimpleITK's NIfTI reader turns NaN into 0 silently, so the check reads the raw data with nibabel.
    Other formats are checked on the SimpleITK array.
    """
    name = str(path)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel

        try:
            data = np.asanyarray(nibabel.load(name).dataobj)
        except Exception as error:  # noqa: BLE001 - truncated or corrupt files raise many types
            raise ImageReadError(f"{path}: cannot read the voxel data ({type(error).__name__}: {error}); "
                                 "is the file complete?") from None
        return int(data.size - np.isfinite(data).sum()) if np.issubdtype(data.dtype, np.floating) else 0
    array, _ = read_image(Path(path))
    return int(array.size - np.isfinite(array).sum())


def stage_image(path: Path, array: np.ndarray, geometry: Geometry, dtype: type = np.float32) -> Path:
    """Write an image to a temp file beside ``path``, fsynced and checked complete; returns the temp file.

    SimpleITK can stop short on a full disk without an error (a .nii.gz cut mid-stream still reads,
    as zeros), so the file is checked before it counts (:func:`verify_image_file`);
    :func:`unisyn_v2.io_utils.commit_file` then renames it into place.
    """
    path = Path(path)
    array = np.asarray(array)
    if tuple(array.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"{path}: array shape {array.shape} does not match the geometry {geometry.shape_zyx}")
    image = sitk.GetImageFromArray(array.astype(dtype, copy=False))
    image.SetSpacing(geometry.spacing_xyz)
    image.SetOrigin(geometry.origin_xyz)
    image.SetDirection(geometry.direction)

    def write(temp: Path) -> None:
        try:
            sitk.WriteImage(image, str(temp), useCompression=True)
        except RuntimeError as error:  # SimpleITK reports a failed write (disk full ...) this way
            raise OSError(errno.EIO, _first_line(error)) from error

    nbytes = int(np.prod(geometry.shape_zyx)) * np.dtype(dtype).itemsize + 352  # uncompressed: the most it needs
    return stage_file(path, write, verify_image_file, needed=nbytes)


def write_image(path: Path, array: np.ndarray, geometry: Geometry, dtype: type = np.float32) -> Path:
    """Write an array with the given geometry atomically (temp file in the same folder, checked, then renamed)."""
    return commit_file(stage_image(path, array, geometry, dtype), path)


def verify_image_file(path: Path) -> None:
    """Raise IncompleteWriteError unless ``path`` is a whole image file.

    NIfTI: the gzip stream (if any) must end with its checksum trailer and the data must hold every byte
    the header announces; other formats must be read back by SimpleITK.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        problem = _nifti_completeness(path)
    else:
        try:
            sitk.ReadImage(str(path))
            problem = None
        except RuntimeError as error:
            problem = f"cannot be read back ({_first_line(error)})"
    if problem is not None:
        raise IncompleteWriteError(errno.EIO, f"the written file is incomplete ({path.stat().st_size} bytes; {problem})")


def _nifti_completeness(path: Path) -> str | None:
    """What is missing from a NIfTI(-1/-2) file, or None when it is whole."""
    head = b""
    size = 0
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as stream:  # reading to the end checks the CRC and length trailer
                while chunk := stream.read(1 << 22):
                    if len(head) < 540:
                        head += chunk[: 540 - len(head)]
                    size += len(chunk)
        else:
            with open(path, "rb") as stream:
                head = stream.read(540)
            size = path.stat().st_size
    except (EOFError, OSError, zlib.error) as error:
        return f"the gzip stream is broken: {error}"
    if len(head) < 348:
        return "no complete NIfTI header"
    for order in "<>":
        header_size = struct.unpack(order + "i", head[:4])[0]
        if header_size in (348, 540):
            break
    else:
        return "no NIfTI header"
    if header_size == 348:
        dims = struct.unpack(order + "8h", head[40:56])
        bitpix = struct.unpack(order + "h", head[72:74])[0]
        offset = struct.unpack(order + "f", head[108:112])[0]
    else:
        if len(head) < 540:
            return "no complete NIfTI-2 header"
        dims = struct.unpack(order + "8q", head[16:80])
        bitpix = struct.unpack(order + "h", head[14:16])[0]
        offset = struct.unpack(order + "q", head[168:176])[0]
    rank = max(1, min(int(dims[0]), 7))
    expected = int(offset) + int(np.prod([max(int(d), 1) for d in dims[1:rank + 1]])) * max(int(bitpix), 8) // 8
    if size < expected:
        return f"{size} of the {expected} data bytes its header announces"
    return None


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "ERROR" in line.upper() or "exception" in line.lower():
            continue
        return line[:200]
    return lines[-1][:200] if lines else type(error).__name__
