"""Move a trained model between machines as one zip file.

``export_model`` packs a model folder (plans, dataset description, fingerprint, trainer.json, the
text-encoder artifact and the chosen checkpoints of the chosen folds) with paths relative to the
results folder; ``install_model`` unpacks it into the results folder, refusing entries that would
escape it (zip-slip) and never overwriting an installed model unless asked.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from unisyn_v2.io_utils import remove_stale_temp_files, temp_prefix, write_failure
from unisyn_v2.paths import results_dir

logger = logging.getLogger(__name__)

MANIFEST = "unisyn_model_manifest.txt"


def _selected_files(model_folder: Path, folds: Sequence[str] | None, checkpoints: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for path in sorted(model_folder.rglob("*")):
        if not path.is_file() or path.name.startswith(".tmp_"):
            continue
        relative = path.relative_to(model_folder)
        top = relative.parts[0]
        if top.startswith("fold_"):
            if folds is not None and top[len("fold_"):] not in folds:
                continue
            if path.suffix == ".pth" and path.name not in checkpoints:
                continue
        files.append(path)
    return files


def export_model(model_folder: Path, output_zip: Path, folds: Sequence[str] | None = None,
                 checkpoints: Sequence[str] = ("checkpoint_final.pth",)) -> Path:
    """Write ``output_zip`` (atomically) holding everything prediction needs from ``model_folder``."""
    model_folder = Path(model_folder)
    if not (model_folder / "trainer.json").is_file():
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


def install_model(archive_path: Path, destination: Path | None = None, overwrite: bool = False) -> Path:
    """Unpack a model zip into the results folder; returns the installed model folder."""
    destination = Path(destination) if destination is not None else results_dir()
    root = destination.resolve()
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive_path}: not a readable zip file ({error}); export the model again with "
                         "unisyn_export_model") from None
    with archive:
        names = [n for n in archive.namelist() if n != MANIFEST and not n.endswith("/")]
        tops = set()
        for name in names:
            target = (root / name).resolve()
            parts = Path(name).parts
            if Path(name).is_absolute() or ".." in parts or not target.is_relative_to(root):
                raise ValueError(f"{archive_path}: entry {name!r} would escape {root}; refusing to install")
            if len(parts) < 3:
                raise ValueError(f"{archive_path}: entry {name!r} is not inside a <Dataset>/<Trainer>__<plans>__<config>/ "
                                 "folder; this is not a unisyn_v2 model zip (make one with unisyn_export_model)")
            tops.add(Path(parts[0]) / parts[1])
        if len(tops) != 1:
            raise ValueError(f"{archive_path}: expected one model folder, found {sorted(map(str, tops))}")
        model_relative = tops.pop()
        model_folder = root / model_relative
        if model_folder.exists() and not overwrite:
            raise FileExistsError(f"{model_folder} exists; pass --overwrite to replace it")
        remove_stale_temp_files(destination)  # the staging folder of a killed install
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix("install_"), dir=destination if destination.exists() else None))
        try:
            for name in names:
                archive.extract(name, staging)
            model_folder.parent.mkdir(parents=True, exist_ok=True)
            _replace_folder(staging / model_relative, model_folder)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{archive_path}: damaged zip file ({error}); copy or export the model again") from None
        except OSError as error:
            raise write_failure(model_folder, error) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("installed %s", model_folder)
    return model_folder


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
