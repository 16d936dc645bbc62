"""The broken-input corpus of tests/test_broken_inputs.py: generators that break a good input in one way,
the error each must produce, and the checks every failure must pass (exit 2, one ``error:`` line naming
the file/case/field, no traceback, nothing half-written, inputs untouched).

Each corpus entry maps a test id to ``(break_it, expected)``: ``break_it`` damages a freshly written
input in place, ``expected`` lists substrings the ``error:`` line must contain.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import SimpleITK as sitk

T1 = "case_000/case_000_T1w.nii.gz"
MASK = "case_000/case_000_brainmask.nii.gz"
Breaker = Callable[[Path], Any]


# ------------------------------------------------------------------ checks
def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (links by target), so any change to a folder shows."""
    digest: dict[str, str] = {}
    for path in sorted(Path(folder).rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            digest[key] = "link:" + os.readlink(path)
        elif path.is_file():
            digest[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def temp_files(folder: Path) -> list[Path]:
    """Leftover temp files of the atomic writers."""
    return [p for p in Path(folder).rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


def files_under(folder: Path) -> list[Path]:
    """Every file (not folder) below ``folder``."""
    return [p for p in Path(folder).rglob("*") if p.is_file()] if Path(folder).exists() else []


def assert_clean_error(rc: int, err: str, expected: tuple[str, ...]) -> str:
    """Exit 2, exactly one ``error:`` line holding every expected text, no traceback; returns the line."""
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------ NIfTI tools
def rewrite_nifti(path: Path, data: np.ndarray | None = None, dtype: Any = None, slope: float | None = None,
                  inter: float = 0.0, pixdim: tuple[float, float, float] | None = None) -> None:
    """Rewrite an image with nibabel: other stored data/dtype, raw scl_slope/scl_inter, raw pixdim."""
    image = nibabel.load(str(path))
    array = np.asarray(image.dataobj) if data is None else data
    header = image.header.copy()
    if dtype is not None:
        header.set_data_dtype(dtype)
        array = array.astype(dtype)
    new = nibabel.Nifti1Image(array, image.affine, header, dtype=dtype)
    if slope is not None:  # raw header fields, kept by nibabel.save for integer data of the header's dtype
        new.header["scl_slope"], new.header["scl_inter"] = slope, inter
    nibabel.save(new, str(path))
    if pixdim is not None:  # nibabel 'fixes' a zero pixdim on save: patch the bytes (pixdim[1:4] at offset 80)
        data = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(data[:80] + struct.pack("<3f", *pixdim) + data[92:]))


def _float_with(value: float) -> Breaker:
    def change(root: Path) -> None:
        array = np.asarray(nibabel.load(str(root / T1)).dataobj, dtype=np.float32).copy()
        array[3, 4, 5] = value
        rewrite_nifti(root / T1, array, np.float32)
    return change


def _slope_overflow(root: Path) -> None:
    array = np.asarray(nibabel.load(str(root / T1)).dataobj)
    rewrite_nifti(root / T1, np.round(array).astype(np.int16) + 100, np.int16, slope=1e36)


def _int64_extremes(root: Path) -> None:
    array = np.zeros(nibabel.load(str(root / T1)).shape, np.int64)
    array[::2] = np.iinfo(np.int64).max
    array[1::2] = np.iinfo(np.int64).min
    rewrite_nifti(root / T1, array, np.int64)


def _truncate(root: Path) -> None:
    data = (root / T1).read_bytes()
    (root / T1).write_bytes(data[: len(data) // 2])


def _shifted_spacing(root: Path) -> None:
    image = sitk.ReadImage(str(root / T1))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(root / T1), useCompression=True)


def _binary_mask_to_two(root: Path) -> None:
    mask = np.asarray(nibabel.load(str(root / MASK)).dataobj).copy()
    mask[mask > 0] = 2
    rewrite_nifti(root / MASK, mask, np.uint8)


def _sidecar(text: str, drop: str | None = None) -> Breaker:
    def change(root: Path) -> None:
        (root / T1.replace(".nii.gz", ".json")).write_text(text)
        if drop:
            edit_json(lambda data: data["cases"][0]["images"][0]["metadata"].pop(drop))(root)
    return change


def edit_json(change: Callable[[dict], Any]) -> Breaker:
    """A breaker that edits dataset.json (a dict) in place."""
    def apply(root: Path) -> None:
        data = json.loads((root / "dataset.json").read_text())
        change(data)
        (root / "dataset.json").write_text(json.dumps(data))
    return apply


def _image(data: dict, **update: Any) -> None:
    data["cases"][0]["images"][0].update(update)


def _symlink_out(root: Path) -> None:
    outside = root.parent.parent / "outside.nii.gz"
    outside.write_bytes((root / T1).read_bytes())
    (root / "case_000" / "link.nii.gz").symlink_to(outside)
    edit_json(lambda data: _image(data, file="case_000/link.nii.gz"))(root)


def _write(name: str, content: bytes | str) -> Breaker:
    return lambda root: (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())


# -------------------------------------------- hostile datasets of issue 18 (part C): verification
CT = "case_000/case_000_CT.nii.gz"
PET = "case_000/case_000_FDG-PET.nii.gz"


def _metadata(index: int, **update: Any) -> Breaker:
    return edit_json(lambda data: data["cases"][0]["images"][index]["metadata"].update(update))


def _one_voxel_mask(root: Path) -> None:
    mask = np.zeros(nibabel.load(str(root / MASK)).shape, np.uint8)
    mask[8, 8, 8] = 1
    rewrite_nifti(root / MASK, mask, np.uint8)


def _negative_pixdim_sign(root: Path) -> None:
    """pixdim[1] = -2 mm (the sform unchanged): SimpleITK reads an x flip the other images do not have."""
    data = gzip.decompress((root / T1).read_bytes())
    pixdim = struct.unpack("<3f", data[80:92])
    (root / T1).write_bytes(gzip.compress(data[:80] + struct.pack("<3f", -pixdim[0], *pixdim[1:]) + data[92:]))


def _text_edit(old: str, new: str) -> Breaker:
    def change(root: Path) -> None:
        text = (root / "dataset.json").read_text()
        assert old in text, old
        (root / "dataset.json").write_text(text.replace(old, new, 1))
    return change


def _second_case(**update: Any) -> Breaker:
    return edit_json(lambda data: data["cases"][1].update(update))



# ----------------------------------------------- the raw-dataset corpus
# Run through unisyn_verify_dataset and unisyn_plan_and_preprocess on a 2-case 16^3 blob dataset (id 1).
RAW_CASES: dict[str, tuple[Breaker, tuple[str, ...]]] = {
    "corrupt_nifti_random_bytes": (_write(T1, os.urandom(3000)), ("case case_000", T1, "field file", "cannot read the image")),
    "truncated_nifti": (_truncate, ("case case_000", T1, "truncated", "copy or export it again")),
    "image_2d": (lambda root: sitk.WriteImage(sitk.Image([16, 16], sitk.sitkFloat32), str(root / T1)),
                 (T1, "must be a 3D single-channel image", "got 2D")),
    "image_4d": (lambda root: sitk.WriteImage(sitk.Image([16, 16, 16, 2], sitk.sitkFloat32), str(root / T1)),
                 (T1, "got 4D", "split 4D series into 3D volumes")),
    "nan_voxels": (_float_with(np.nan), (T1, "field intensities", "NaN or infinite", "replace them")),
    "inf_voxels": (_float_with(np.inf), (T1, "field intensities", "NaN or infinite", "replace them")),
    "all_zero_image": (lambda root: rewrite_nifti(root / T1, np.zeros((16, 16, 16), np.float32), np.float32),
                       (T1, "field intensities", "all zeros", "re-export")),
    "int16_scl_slope_overflows_float32": (_slope_overflow, (T1, "overflow float32", "scl_slope", "fix the scaling")),
    "int64_extreme_values": (_int64_extremes, (T1, "64-bit integer", "float32 or int32")),
    "zero_voxel_spacing": (lambda root: rewrite_nifti(root / T1, pixdim=(0.0, 0.0, 0.0)), (T1, "zero voxel spacing", "fix the header")),
    "mismatched_geometry_in_case": (_shifted_spacing, ("case case_000", "field geometry", "geometry differs", "resample")),
    "brain_mask_not_binary": (_binary_mask_to_two, (MASK, "field brain_mask", "only 0 and 1")),
    "missing_image_file": (lambda root: (root / T1).unlink(), (T1, "field file", "does not exist", "fix the path")),
    "sidecar_echo_time_in_ms": (_sidecar('{"EchoTime": 90}', drop="echo_time"),
                                ("case_000_T1w.json.EchoTime", "90000 ms", "milliseconds", "write 0.09")),
    "sidecar_invalid_json": (_sidecar("{not json"), ("case_000_T1w.json", "unreadable BIDS sidecar")),
    "sidecar_wrong_type": (_sidecar('{"EchoTime": "0.03"}'), ("EchoTime", "must be a number")),
    "missing_modality_field": (edit_json(lambda d: d["cases"][0]["images"][0].pop("modality")),
                               ("case case_000", "field modality", "'modality' is missing")),
    "missing_file_field": (edit_json(lambda d: d["cases"][0]["images"][0].pop("file")),
                           ("case case_000", "field file", "'file' must be a string")),
    "cases_wrong_type": (edit_json(lambda d: d.update(cases={"case_000": {}})), ("field cases", "must be a non-empty list")),
    "metadata_wrong_type": (edit_json(lambda d: d["cases"][0]["images"][0]["metadata"].update(flip_angle="eight")),
                            ("case case_000", "field metadata", "flip_angle: must be a number")),
    "case_id_wrong_type": (edit_json(lambda d: d["cases"][0].update(id=5)), ("case #0", "field id", "must be a non-empty string")),
    "unknown_top_level_key": (edit_json(lambda d: d.update(labels={"brain": 1})),
                              ("field labels", "unknown top-level key", "remove or rename")),
    "unknown_metadata_field": (edit_json(lambda d: d["cases"][0]["images"][0]["metadata"].update(echotime=3)),
                               ("field metadata", "unknown field(s) echotime", "echo_time")),
    "duplicated_case_id": (edit_json(lambda d: d["cases"][1].update(id="case_000")), ("case case_000", "duplicated case id")),
    "empty_case_list": (edit_json(lambda d: d.update(cases=[])), ("field cases", "non-empty list")),
    "nan_literal_in_dataset_json": (lambda root: _write("dataset.json", (root / "dataset.json").read_text().replace(
        '"flip_angle": 8.0', '"flip_angle": NaN'))(root), ("field metadata", "flip_angle: must be finite")),
    "dataset_json_missing": (lambda root: (root / "dataset.json").unlink(), ("dataset.json", "missing dataset.json")),
    "dataset_json_invalid": (_write("dataset.json", '{"cases": ['), ("dataset.json", "invalid JSON")),
    "path_escaping_dataset": (edit_json(lambda d: _image(d, file="../../outside.nii.gz")), ("field file", "escapes the folder")),
    "symlink_escaping_dataset": (_symlink_out, ("case_000/link.nii.gz", "escapes the folder")),
    # issue 18, failure 4: times in seconds in dataset.json (ms expected), one file under two modalities
    "metadata_times_in_seconds": (_metadata(0, repetition_time=2.3, echo_time=0.0023, inversion_time=0.9),
                                  ("case case_000", T1, "field metadata.repetition_time", "2.3 looks like seconds", "write 2300")),
    "echo_time_in_seconds": (_metadata(0, echo_time=0.0023), (T1, "field metadata.echo_time", "looks like seconds", "write 2.3")),
    "one_file_under_two_modalities": (edit_json(lambda d: d["cases"][0]["images"][1].update(file=T1)),
                                      ("case case_000", T1, "field file", "same file as", "listed as CT and as T1w")),
    "same_content_under_two_modalities": (lambda root: (root / CT).write_bytes((root / T1).read_bytes()),
                                          ("case case_000", CT, "same content as " + T1)),
    "brain_mask_listed_as_an_image": (edit_json(lambda d: d["cases"][0].update(brain_mask=T1)), (T1, "same file as", "brain mask")),
    "one_image_in_two_cases": (_second_case(images=[{"file": T1, "modality": "T1w"}, {"file": "case_001/case_001_CT.nii.gz",
                                                                                      "modality": "CT"}]),
                               ("case case_001", T1, "is also an image of case case_000")),
    # implausible values per field, with the value in the right unit where a unit slip explains them
    "flip_angle_zero": (_metadata(0, flip_angle=0.0), ("field metadata.flip_angle", "must be within (0, 180] degrees")),
    "flip_angle_in_radians": (_metadata(0, flip_angle=0.14), ("field metadata.flip_angle", "looks like radians", "write 8.02")),
    "field_strength_in_millitesla": (_metadata(0, field_strength=3000.0), ("field metadata.field_strength", "looks like mT", "write 3 (T)")),
    "kvp_in_volts": (_metadata(1, kvp=120000.0), (CT, "field metadata.kvp", "looks like V", "write 120 (kV)")),
    "injected_dose_in_becquerel": (_metadata(2, injected_dose=2.5e8), (PET, "field metadata.injected_dose", "write 250 (MBq)")),
    "uptake_time_in_seconds": (_metadata(2, uptake_time=2700.0), (PET, "field metadata.uptake_time", "write 45 (min)")),
    "age_negative": (edit_json(lambda d: d["cases"][0]["subject"].update(age=-5)), ("case case_000", "field subject", "age", "got -5")),
    "age_in_months": (edit_json(lambda d: d["cases"][0]["subject"].update(age=852)), ("field subject", "looks like months", "write 71")),
    "sex_x": (edit_json(lambda d: d["cases"][0]["subject"].update(sex="X")), ("case case_000", "subject.sex", "must be M or F")),
    # images that normalisation cannot use: caught before any plan or split is written
    "constant_mri_image": (lambda root: rewrite_nifti(root / T1, np.full((16, 16, 16), 100.0, np.float32), np.float32),
                           ("case case_000", T1, "field intensities", "constant (p0.5 = p99.5 = 100)", "brain mask")),
    "brain_mask_of_one_voxel": (_one_voxel_mask, ("case case_000", T1, "inside the brain mask (1 voxel(s)) are constant")),
    "brain_mask_empty": (lambda root: rewrite_nifti(root / MASK, np.zeros((16, 16, 16), np.uint8), np.uint8),
                         (MASK, "all zeros")),
    "voxel_of_3e38": (_float_with(3e38), ("case case_000", T1, "field intensities", "3e+38", "(x, y, z) = (3, 4, 5)")),
    "voxel_of_minus_1e12": (_float_with(-1e12), (T1, "beyond +-1e+10", "-1e+12")),
    "image_zero_size_dimension": (lambda root: nibabel.save(nibabel.Nifti1Image(np.zeros((16, 16, 0), np.float32), np.eye(4)),
                                                            str(root / T1)), (T1, "field file", "empty or flat")),
    "negative_voxel_size_in_header": (_negative_pixdim_sign, ("case case_000", T1, "field geometry", "direction")),
    "negative_voxel_size_disagreeing_with_sform": (lambda root: rewrite_nifti(root / T1, pixdim=(-1.0, 1.0, 1.0)),
                                                   ("case case_000", T1, "field geometry", "geometry differs from " + CT)),
    # sidecars and dataset.json text
    "sidecar_nan": (_sidecar('{"EchoTime": NaN}', drop="echo_time"), ("case_000_T1w.json.EchoTime", "must be finite")),
    "sidecar_dose_not_a_number": (lambda root: (root / PET.replace(".nii.gz", ".json")).write_text('{"InjectedRadioactivity": "lots"}'),
                                  (PET, "InjectedRadioactivity", "must be a number")),
    "dataset_json_trailing_comma": (_text_edit('"flip_angle": 8.0', '"flip_angle": 8.0,'), ("dataset.json", "invalid JSON", "line")),
    "dataset_json_duplicated_key": (_text_edit('"flip_angle": 8.0', '"flip_angle": 8.0, "flip_angle": 80.0'),
                                    ("dataset.json", "key 'flip_angle' appears twice", "remove one")),
    "dataset_json_latin1": (lambda root: (root / "dataset.json").write_bytes(
        (root / "dataset.json").read_text().replace('"cases"', '"description": "M\u00fcnchen", "cases"').encode("latin-1")),
        ("dataset.json", "not UTF-8 text", "save it as UTF-8")),
    # case ids become file names
    "case_id_with_backslash": (edit_json(lambda d: d["cases"][0].update(id="sub\\01")), ("case #0", "field id", "usable in file names")),
    "case_id_with_line_break": (edit_json(lambda d: d["cases"][0].update(id="sub\n01")), ("field id", "control characters")),
    "case_id_dot_dot": (edit_json(lambda d: d["cases"][0].update(id="..")), ("field id", "'.' and '..'")),
    "case_id_too_long": (edit_json(lambda d: d["cases"][0].update(id="s" * 201)), ("field id", "longer than 200 bytes")),
    "case_ids_differ_in_letter_case": (_second_case(id="CASE_000"), ("case CASE_000", "differ only in letter case")),
    "case_id_is_another_case_mask": (_second_case(id="case_000_mask"), ("case case_000_mask", "preprocessed brain mask of case 'case_000'")),
    "modality_with_spaces": (edit_json(lambda d: _image(d, modality=" T1w ")), ("field modality", "unknown modality ' T1w '")),
}
# (dataset argument, breaker of the raw folder, expected): the -d value itself is wrong.
ID_CASES: dict[str, tuple[str, Breaker, tuple[str, ...]]] = {
    "dataset_id_ambiguous": ("1", lambda root: (root.parent / "Dataset001_Other").mkdir(), ("id 001 is ambiguous", "pass the full name")),
    "dataset_id_missing": ("7", lambda root: None, ("no dataset with id 007", "unisyn_phantom -d 7")),
    "dataset_id_missing_lists_existing": ("7", lambda root: (root.parent.parent / "results" / "Dataset002_Other").mkdir(),
                                          ("no dataset with id 007", "(existing: Dataset001_Blob, Dataset002_Other)")),
}


# ------------------------------------------------------------ disk full
def failing_after(real: Callable[..., Any], ok_calls: int, write_some: Callable[..., None]) -> Callable[..., Any]:
    """``real`` for the first ``ok_calls`` calls, then a write that stops midway with ENOSPC."""
    calls = {"n": 0}

    def call(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= ok_calls:
            return real(*args, **kwargs)
        write_some(*args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return call


class SitkFullDisk:
    """Stands in for the SimpleITK module inside image_io: WriteImage runs out of space after ``ok_calls``."""

    def __init__(self, ok_calls: int) -> None:
        half = lambda image, path, *rest: Path(path).write_bytes(b"\x1f\x8b\x08" + b"\0" * 64)  # noqa: E731
        self.WriteImage = failing_after(sitk.WriteImage, ok_calls, half)

    def __getattr__(self, name: str) -> Any:
        return getattr(sitk, name)


class JsonFullDisk:
    """Stands in for the json module inside io_utils: dump runs out of space after ``ok_calls``."""

    def __init__(self, ok_calls: int) -> None:
        self.dump = failing_after(json.dump, ok_calls, lambda data, stream, *rest: stream.write('{"half": '))

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)


class SitkShortWrite:
    """Stands in for SimpleITK inside image_io: after ``ok_calls`` whole images WriteImage stops short on a full
    disk *without raising* (what SimpleITK did with 40 kB free): a cut gzip stream that still reads, as zeros."""

    def __init__(self, ok_calls: int) -> None:
        self.calls = 0
        self.ok_calls = ok_calls

    def WriteImage(self, image: Any, path: str, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - SimpleITK's name
        sitk.WriteImage(image, path, *args, **kwargs)
        self.calls += 1
        if self.calls > self.ok_calls:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 3])

    def __getattr__(self, name: str) -> Any:
        return getattr(sitk, name)


class NumpyFullDisk:
    """Stands in for numpy inside case_store: save stops with numpy's errno-less short write on a full disk."""

    @staticmethod
    def save(file: Any, arr: Any, *args: Any, **kwargs: Any) -> None:
        file.write(b"\x93NUMPY" + b"\0" * 100)
        raise OSError(f"{np.asarray(arr).nbytes} requested and 11232 written")

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


# --------------------------------------------------------------- model zips
def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    """A zip holding ``entries`` (name -> bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:  # stored: damage_member finds bytes
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def damage_member(path: Path, marker: bytes) -> None:
    """Flip a byte inside a stored member (found by ``marker``) so its CRC check fails on extraction."""
    data = bytearray(path.read_bytes())
    index = data.index(marker)
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------- hostile model zips (issue 18, part A)
MODEL_DIR = "Dataset001_Stand/GFMTrainer__unisynPlans__3d"
MODEL_MANIFEST = "unisyn_model_manifest.txt"
PAYLOAD_PY = b"import os, pathlib\npathlib.Path(os.environ['UNISYN_TEST_MARKER']).write_text('pwned')\n" \
             b"from unisyn_v2.training.gfm_trainer import GFMTrainer\n"


def model_trainer_json(plans: Any, **update: Any) -> dict[str, Any]:
    """A valid trainer.json of a one-hot GFM model for ``plans`` (a Plans), with ``update`` applied."""
    info = {"trainer_class": "unisyn_v2.training.gfm_trainer:GFMTrainer", "trainer_name": "gfm",
            "dataset_name": plans.dataset_name, "plans_name": plans.plans_name, "configuration": "3d",
            "network": {"kind": "gfm", "kwargs": {}},
            "conditioning": {"kind": "onehot", "text_dim": len(plans.modalities), "modalities": list(plans.modalities)},
            "is_slab": False, "patch_size": [8, 16, 16], "mirror_axes": [0, 1, 2], "modalities": list(plans.modalities),
            "typical_metadata": plans.typical_metadata, "tasks": None, "task_filter": None}
    info.update(update)
    return info


def model_zip_entries(folder: str = MODEL_DIR, trainer: dict[str, Any] | None = None,
                      plans: Callable[[dict], Any] | None = None, extra: dict[str, bytes] | None = None,
                      unlisted: dict[str, bytes] | None = None, manifest: bool = True) -> dict[str, bytes]:
    """The entries (name -> bytes) of a valid model zip as unisyn_export_model writes it, manifest last.

    ``trainer`` updates trainer.json, ``plans`` edits the plans dict in place, ``extra`` adds members that
    the manifest lists, ``unlisted`` members that it does not; ``manifest=False`` leaves it out.
    """
    from predictor_fixtures import make_plans

    plan = make_plans()
    plans_dict = plan.to_dict()
    if plans is not None:
        plans(plans_dict)
    entries = {f"{folder}/plans.json": json.dumps(plans_dict).encode(),
               f"{folder}/trainer.json": json.dumps(model_trainer_json(plan, **(trainer or {}))).encode(),
               f"{folder}/fold_0/checkpoint_final.pth": b"WEIGHTS" * 20}
    entries.update(extra or {})
    listing = "".join(f"{name}\n" for name in entries)
    entries.update(unlisted or {})
    if manifest:
        entries[MODEL_MANIFEST] = listing.encode()
    return entries


def write_tweaked_zip(path: Path, entries: dict[str, bytes], tweak: Callable[[zipfile.ZipInfo], Any] | None = None,
                      deflate: bool = False, duplicate: str | None = None) -> Path:
    """A zip of ``entries`` whose ZipInfos ``tweak`` may alter (mode bits, flags); ``duplicate`` is written twice."""
    import warnings

    with zipfile.ZipFile(path, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, data in list(entries.items()) + ([(duplicate, entries[duplicate])] if duplicate else []):
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            info.external_attr = 0o100644 << 16
            if tweak is not None:
                tweak(info)
            archive.writestr(info, data)
    return path


def _central_entry(data: bytearray, member: str) -> int:
    entry, name = data.index(b"PK\x01\x02"), member.encode()  # the first central-directory entry
    while data[entry + 46: entry + 46 + len(name)] != name:
        entry = data.index(b"PK\x01\x02", entry + 4)
    return entry


def understate_size(path: Path, member: str, size: int) -> None:
    """Patch the central directory so ``member`` declares ``size`` uncompressed bytes (a lying header)."""
    data = bytearray(path.read_bytes())
    entry = _central_entry(data, member)
    data[entry + 24: entry + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def flag_encrypted(path: Path, member: str) -> None:
    """Set the 'encrypted' bit of ``member`` in the central directory (zipfile cannot write encrypted members)."""
    data = bytearray(path.read_bytes())
    entry = _central_entry(data, member)
    data[entry + 8] |= 0x01
    path.write_bytes(bytes(data))


class PicklePayload:
    """Unpickling this creates ``marker``: what a checkpoint carrying code would do (with worse code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return Path.touch, (self.marker,)
