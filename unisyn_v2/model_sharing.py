"""Move a trained model between machines as one zip file.

``export_model`` packs a model folder (plans, dataset description, fingerprint, trainer.json, the
text-encoder artifact and the chosen checkpoints of the chosen folds) with paths relative to the
results folder, and a manifest listing them; ``install_model`` unpacks it into the results folder.

A model zip may come from anyone, so install treats it as hostile data and refuses, saying why: an
entry that would escape the results folder (zip-slip, absolute path, symbolic link), a duplicate or
encrypted entry, a file that is not part of a model folder (a ``.py``, an unexpected name), a member
missing from or not listed in the manifest, a JSON file that fails its schema (plans, trainer.json,
dataset.json, ...), a trainer class that is not registered, and a zip bomb (more than
``max_bytes`` in all, or a member that inflates more than :data:`MAX_RATIO` times: checked on the
declared sizes first and again on the bytes actually extracted). Nothing in a model runs as code.
It stages inside the results folder (never the system temp folder) and never overwrites an installed
model unless asked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path

from unisyn_v2.contracts.model_layout import (
    FINAL_CHECKPOINT, PLANS_FILE, TEXT_ENCODER_FOLDER, TRAINER_FILE, ModelLayout, fold_of,
)
from unisyn_v2.io_utils import ensure_folder, remove_stale_temp_files, temp_prefix, write_failure
from unisyn_v2.paths import results_dir

logger = logging.getLogger(__name__)

MANIFEST = "unisyn_model_manifest.txt"
MAX_BYTES = 64 * 2**30  # default limit on a model's uncompressed size (5 folds of the paper-sized GFM fit)
MAX_RATIO = 100  # uncompressed / compressed; float weights deflate about 1.1x, JSON and logs 3-10x
RATIO_FLOOR = 2**20  # members (and archives) below this size are never counted as bombs
MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 2**20
_CHUNK = 2**20
_DATASET_FOLDER = re.compile(r"Dataset\d{3}_[A-Za-z0-9][A-Za-z0-9_.+-]*")
_MODEL_FOLDER = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*__[A-Za-z0-9][A-Za-z0-9_.+-]*__[A-Za-z0-9][A-Za-z0-9_.+-]*")


class ModelArchiveError(ValueError):
    """A model zip that is refused (one line naming the archive, the entry and why)."""


def _selected_files(model_folder: Path, folds: Sequence[str] | None, checkpoints: Sequence[str]) -> list[Path]:
    from unisyn_v2.models.folder import is_model_file

    files: list[Path] = []
    for path in sorted(model_folder.rglob("*")):
        if not path.is_file() or path.name.startswith(".tmp_"):
            continue
        relative = path.relative_to(model_folder)
        if not is_model_file(relative.as_posix()):
            logger.warning("not exporting %s: not part of a model folder (unisyn_install_model would refuse it)", path)
            continue
        fold = fold_of(relative.parts[0])
        if fold is not None:
            if folds is not None and fold not in folds:
                continue
            if path.suffix == ".pth" and path.name not in checkpoints:
                continue
        files.append(path)
    return files


def export_model(model_folder: Path, output_zip: Path, folds: Sequence[str] | None = None,
                 checkpoints: Sequence[str] = (FINAL_CHECKPOINT,)) -> Path:
    """Write ``output_zip`` (atomically) holding everything prediction needs from ``model_folder``."""
    model_folder = Path(model_folder)
    if not ModelLayout(model_folder).trainer_info.is_file():
        raise FileNotFoundError(f"{model_folder} is not a trained model folder (no trainer.json)")
    prefix = Path(model_folder.parent.name) / model_folder.name  # DatasetXXX_Name/Trainer__plans__config
    files = _selected_files(model_folder, folds, checkpoints)
    if not any(f.suffix == ".pth" for f in files):
        raise FileNotFoundError(f"{model_folder}: no {', '.join(checkpoints)} in the selected folds; train first or pass --chk")
    output_zip = Path(output_zip)
    output_zip.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".zip", dir=output_zip.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(file, str(prefix / file.relative_to(model_folder)))
            archive.writestr(MANIFEST, "\n".join(str(prefix / f.relative_to(model_folder)) for f in files) + "\n")
        os.replace(temp, output_zip)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    logger.info("exported %d file(s) of %s to %s", len(files), model_folder, output_zip)
    return output_zip


def install_model(archive_path: Path, destination: Path | None = None, overwrite: bool = False,
                  trusted_trainers: Collection[str] = (), max_bytes: int = MAX_BYTES) -> Path:
    """Check and unpack a model zip into the results folder; returns the installed model folder.

    ``trusted_trainers``: ``package.module:Class`` paths the user named on the command line, which
    trainer.json may name besides the registered trainers (nothing is imported at install).
    """
    destination = Path(destination) if destination is not None else results_dir()
    root = destination.resolve()
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive_path}: not a readable zip file ({error}); export the model again with "
                         "unisyn_export_model") from None
    with archive:
        infos = _checked_members(archive, archive_path, root)
        model_relative = Path(*Path(infos[0].filename).parts[:2])
        model_folder = root / model_relative
        if model_folder.exists() and not overwrite:
            raise FileExistsError(f"{model_folder} exists; pass --overwrite to replace it")
        files = {Path(info.filename).relative_to(model_relative).as_posix(): info for info in infos}
        try:
            _check_layout(archive, archive_path, model_relative, files, max_bytes, destination)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # the manifest itself is damaged
            raise ValueError(f"{archive_path}: damaged zip file ({error}); copy or export the model again") from None
        created = [p for p in (destination, *destination.parents) if not p.exists()]
        ensure_folder(destination)  # staging goes inside the results folder, never the system temp folder
        remove_stale_temp_files(destination)  # the staging folder of a killed install
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix("install_"), dir=destination))
        installed = False
        try:
            _extract(archive, archive_path, list(files.values()), staging, max_bytes)
            _validate_contents(archive_path, staging / model_relative, model_relative, sorted(files), trusted_trainers)
            model_folder.parent.mkdir(parents=True, exist_ok=True)
            _replace_folder(staging / model_relative, model_folder)
            installed = True
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise ValueError(f"{archive_path}: damaged zip file ({error}); copy or export the model again") from None
        except OSError as error:
            raise write_failure(model_folder, error) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in [] if installed else created:  # a refused install leaves no folder behind either
                try:
                    folder.rmdir()
                except OSError:
                    break
    logger.info("installed %s", model_folder)
    return model_folder


def _refuse(archive_path: Path, message: str) -> ModelArchiveError:
    return ModelArchiveError(f"{archive_path}: {message}; refusing to install")


def _checked_members(archive: zipfile.ZipFile, archive_path: Path, root: Path) -> list[zipfile.ZipInfo]:
    """The file entries (manifest and folder entries left out), checked for names, types and one model folder."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _refuse(archive_path, f"{len(infos)} entries (a model has at most {MAX_MEMBERS})")
    seen: set[str] = set()
    files: list[zipfile.ZipInfo] = []
    tops: set[Path] = set()
    for info in infos:
        name = info.filename
        if name in seen:
            raise _refuse(archive_path, f"entry {name!r} appears twice (which copy would count?)")
        seen.add(name)
        if name == MANIFEST or name.endswith("/"):
            continue
        if "\\" in name or "\x00" in name or name != Path(name).as_posix():
            raise _refuse(archive_path, f"entry {name!r} is not a plain relative path")
        parts = Path(name).parts
        target = (root / name).resolve()
        if Path(name).is_absolute() or ".." in parts or not target.is_relative_to(root):
            raise ValueError(f"{archive_path}: entry {name!r} would escape {root}; refusing to install")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse(archive_path, f"entry {name!r} is a symbolic link (a model folder holds plain files only)")
        if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
            raise _refuse(archive_path, f"entry {name!r} is not a plain file (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            raise _refuse(archive_path, f"entry {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(archive_path, f"entry {name!r} uses compression method {info.compress_type} (unisyn_export_model "
                                        "writes stored or deflated entries)")
        if len(parts) < 3:
            raise ValueError(f"{archive_path}: entry {name!r} is not inside a <Dataset>/<Trainer>__<plans>__<config>/ "
                             "folder; this is not a unisyn_v2 model zip (make one with unisyn_export_model)")
        tops.add(Path(parts[0]) / parts[1])
        files.append(info)
    if len(tops) != 1:
        raise ValueError(f"{archive_path}: expected one model folder, found {sorted(map(str, tops)) or 'none'}")
    dataset, model = tops.pop().parts
    if not _DATASET_FOLDER.fullmatch(dataset):
        raise _refuse(archive_path, f"{dataset!r} is not a DatasetXXX_Name folder")
    if not _MODEL_FOLDER.fullmatch(model):
        raise _refuse(archive_path, f"'{dataset}/{model}' is not a <Trainer>__<plans>__<configuration> model folder name")
    return files


def _check_layout(archive: zipfile.ZipFile, archive_path: Path, model_relative: Path,
                  files: dict[str, zipfile.ZipInfo], max_bytes: int, destination: Path) -> None:
    """Every file belongs in a model folder, the required ones are there, the manifest lists exactly them,
    and the declared sizes are no zip bomb and fit the disk."""
    from unisyn_v2.models.folder import is_model_file

    for relative in sorted(files):
        if not is_model_file(relative):
            raise _refuse(archive_path, f"entry '{model_relative.as_posix()}/{relative}' is not part of a model folder "
                                        "(plans.json, trainer.json, dataset.json, dataset_fingerprint.json, text_encoder/, "
                                        "fold_N/*.pth, logs and validation figures only; never code)")
    for required in (PLANS_FILE, TRAINER_FILE):
        if required not in files:
            raise _refuse(archive_path, f"no {model_relative.as_posix()}/{required}: not a complete model folder")
    if not any(fold_of(name) is not None and name.endswith(".pth") for name in files):
        raise _refuse(archive_path, "no fold_N/*.pth checkpoint: not a trained model")
    try:
        manifest_info = archive.getinfo(MANIFEST)
    except KeyError:
        raise _refuse(archive_path, f"no {MANIFEST}: not written by unisyn_export_model") from None
    if manifest_info.file_size > MAX_MANIFEST_BYTES:
        raise _refuse(archive_path, f"{MANIFEST} declares {manifest_info.file_size} bytes (a manifest is a short list)")
    listed_lines = _read_member(archive, manifest_info, MAX_MANIFEST_BYTES).decode("utf-8", "replace").splitlines()
    listed = {line.strip() for line in listed_lines if line.strip()}
    present = {f"{model_relative.as_posix()}/{relative}" for relative in files}
    unlisted, missing = sorted(present - listed), sorted(listed - present)
    if unlisted:
        raise _refuse(archive_path, f"entry {unlisted[0]!r} is not listed in {MANIFEST} (added after export?)")
    if missing:
        raise _refuse(archive_path, f"{MANIFEST} lists {missing[0]!r}, which the zip does not hold (a member is missing)")
    total = sum(info.file_size for info in files.values())
    packed = sum(info.compress_size for info in files.values())
    if total > max_bytes:
        raise _refuse(archive_path, f"it unpacks to {total / 2**30:.3g} GiB, over the limit of {max_bytes / 2**30:.3g} GiB "
                                    "(--max_size_gb raises it)")
    for info in files.values():
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _refuse(archive_path, f"entry {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):.0f}x "
                                        f"({info.compress_size} -> {info.file_size} bytes), over the limit of {MAX_RATIO}x: a zip bomb?")
    if total > RATIO_FLOOR and total > MAX_RATIO * max(packed, 1):
        raise _refuse(archive_path, f"it inflates {total / max(packed, 1):.0f}x in all, over the limit of {MAX_RATIO}x: a zip bomb?")
    folder = next((p for p in (destination, *destination.parents) if p.is_dir()), None)
    free = shutil.disk_usage(folder).free if folder is not None else None
    if free is not None and total > free:
        raise OSError(f"cannot install {archive_path}: it needs {total / 2**20:.1f} MiB and {folder} has "
                      f"{free / 2**20:.1f} MiB free; free some disk space")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, refusing more than ``limit`` or its declared size whatever the header says."""
    chunks, count = [], 0
    with archive.open(info) as stream:
        while chunk := stream.read(_CHUNK):
            count += len(chunk)
            if count > min(limit, info.file_size):
                raise ModelArchiveError(f"entry {info.filename!r} inflates beyond its declared {info.file_size} bytes; "
                                        "refusing to install")
            chunks.append(chunk)
    return b"".join(chunks)


def _extract(archive: zipfile.ZipFile, archive_path: Path, infos: list[zipfile.ZipInfo], staging: Path, max_bytes: int) -> None:
    """Copy each member into ``staging``, counting the bytes really inflated (the declared sizes may lie)."""
    total = 0
    for info in infos:
        target = staging / info.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with archive.open(info) as source, open(target, "xb") as sink:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                total += len(chunk)
                if written > info.file_size or total > max_bytes:
                    raise _refuse(archive_path, f"entry {info.filename!r} inflates beyond its declared size "
                                                f"({info.file_size} bytes): a zip bomb?")
                sink.write(chunk)


def _validate_contents(archive_path: Path, staged: Path, model_relative: Path, relatives: list[str],
                       trusted_trainers: Collection[str]) -> None:
    """Every JSON against its schema (errors name the archive and the member), and the conditioning's artifact."""
    from unisyn_v2.models.folder import validate_model_file

    for relative in relatives:
        source = f"{archive_path}: {model_relative.as_posix()}/{relative}"
        try:
            validate_model_file(relative, staged / relative, source, trusted_trainers)
        except ModelArchiveError:
            raise
        except ValueError as error:
            raise ModelArchiveError(f"{error}; refusing to install") from None
    info = json.loads(ModelLayout(staged).trainer_info.read_text())
    conditioning = info.get("conditioning") or {}
    if conditioning.get("kind") == "text":
        folder = conditioning.get("text_encoder", TEXT_ENCODER_FOLDER)
        for name in ("config.json", "tokenizer.json", "weights.pt"):
            if f"{folder}/{name}" not in relatives:
                raise _refuse(archive_path, f"trainer.json conditions on text but the zip has no "
                                            f"{model_relative.as_posix()}/{folder}/{name}")


def _replace_folder(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is set aside first and put back if the move fails."""
    backup = target.with_name(f".tmp_replaced_{target.name}") if target.exists() else None
    if backup is not None:
        os.replace(target, backup)
    try:
        shutil.move(str(new), target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
