"""Plan-and-preprocess of one dataset with unisyn_v2 and with nnU-Net v2, side by side.

Both tools get the same cases and the same images (the modalities every selected case has; nnU-Net
needs a fixed channel set, so cases lacking one are left out for both), the same process count, and a
fresh output folder for every run. nnU-Net gets the brain mask as its label. Each tool runs ``repeats``
times as a subprocess, alternating which goes first; for each run we record the wall time, the CPU time
(user + sys of the process and all its reaped descendants, from ``wait4``), and the peak memory of the
whole process tree (sum of RSS and of PSS over the tree, polled from /proc every ``--poll`` seconds;
PSS splits pages shared between workers, so it is the fairer figure).

Run from the repository root with the project venv; nnU-Net lives in its own venv::

    python -m venv .venv_nnunet && .venv_nnunet/bin/pip install nnunetv2 torch==2.13.0 psutil
    .venv/bin/python benchmarks/preprocessing_vs_nnunet.py --cases 20 -np 2 --repeats 3
    .venv/bin/python benchmarks/preprocessing_vs_nnunet.py --generator templates --cases 8 -np 2 --repeats 3

``--generator templates`` makes a real-size dataset where both tools resample (issue 21): the ICBM152
T1w and the Rorden CT template of ``shared/data/real_mni2mm`` (2 mm, real images), B-spline resampled
to 182x218x182 at 1 mm for half the cases and 182x218x152 at 1 x 1 x 1.2 mm for the other half, each
case shifted by up to 3 mm, its T1w scaled and both given noise. The median spacing (1.1 mm along z)
differs from every case's, so every case is resampled. ``--quality`` (default on with templates)
then resamples one noise-free 1.2 mm case to the target spacing with each tool's own resampling
function (unisyn: ``resample_image`` at the plans' order 1, torch trilinear; nnU-Net:
``resample_data_or_seg_to_shape`` at its default order 3, skimage cubic) and scores both against the
truth, the template B-spline-resampled straight onto the output grid (both tools keep the field of view
with voxel centres at align_corners=False), inside the brain mask.

Results go to ``--out`` as ``result.json`` and ``result.md`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NNUNET_VENV = REPO / ".venv_nnunet"


# ----------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """nproc, CPU model, RAM and the load average when the benchmark started."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "ram_gib": ram_gib, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_at_start": list(os.getloadavg())}


# ------------------------------------------------------------------------------ process-tree sampler
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    rss = pss = 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def run_measured(command: list[str], env: dict[str, str], log_path: Path, poll_s: float) -> dict[str, Any]:
    """Run ``command``; wall time, CPU time and peak tree memory (stdout+stderr go to ``log_path``)."""
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_rss = peak_pss = peak_procs = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - started
                break
            rss = pss = 0
            pids = _tree(process.pid)
            for member in pids:
                r, p = _memory_kib(member)
                rss, pss = rss + r, pss + p
            peak_rss, peak_pss, peak_procs = max(peak_rss, rss), max(peak_pss, pss), max(peak_procs, len(pids))
            time.sleep(poll_s)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": process.returncode, "wall_s": round(wall, 2), "cpu_user_s": round(usage.ru_utime, 2),
            "cpu_sys_s": round(usage.ru_stime, 2), "peak_tree_rss_mib": round(peak_rss / 1024, 1),
            "peak_tree_pss_mib": round(peak_pss / 1024, 1), "max_single_process_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "max_processes": peak_procs, "loadavg_after": list(os.getloadavg()), "log": str(log_path)}


def folder_mib(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1024**2, 1)


# -------------------------------------------------------------------------------------- datasets
TEMPLATES = REPO.parent / "shared" / "data" / "real_mni2mm"
TEMPLATE_FILES = {"T1w": "T1w_icbm152avg.nii.gz", "CT": "CT_rorden30_HU.nii.gz", "mask": "brainmask_bin.nii.gz"}
TEMPLATE_METADATA = {"T1w": {"field_strength": 3.0, "manufacturer": "Siemens", "repetition_time": 2300.0, "echo_time": 2.3,
                             "inversion_time": 900.0, "flip_angle": 8.0}, "CT": {"kvp": 120.0}}
FIELD_OF_VIEW_MM = (182.0, 218.0, 182.0)  # (x, y, z): the MNI 1 mm grid


def template_case_grid(index: int, seed: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(spacing, origin) (x, y, z) of case ``index``: 1 mm or 1 x 1 x 1.2 mm, shifted by up to 3 mm."""
    import numpy as np

    spacing = (1.0, 1.0, 1.0) if index % 2 == 0 else (1.0, 1.0, 1.2)
    shift = np.random.default_rng([seed, index]).uniform(-3.0, 3.0, 3)
    return spacing, (-90.0 + float(shift[0]), 126.0 + float(shift[1]), -72.0 + float(shift[2]))


def template_on_grid(name: str, spacing: tuple[float, ...], origin: tuple[float, ...], size: tuple[int, ...] | None = None,
                     nearest: bool = False) -> Any:
    """A template resampled (B-spline, or nearest for the mask) onto a grid with the templates' direction."""
    import SimpleITK as sitk

    template = sitk.ReadImage(str(TEMPLATES / TEMPLATE_FILES[name]), sitk.sitkFloat32)
    size = size or tuple(int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM, spacing))
    default = -1024.0 if name == "CT" else 0.0
    return sitk.Resample(template, [int(v) for v in size], sitk.Transform(), sitk.sitkNearestNeighbor if nearest else sitk.sitkBSpline,
                         origin, spacing, template.GetDirection(), default, sitk.sitkFloat32)


def write_template_dataset(target: Path, cases: int, seed: int) -> None:
    """Real-size cases of mixed spacing from the real templates (see the module docstring)."""
    import numpy as np
    import SimpleITK as sitk

    entries = []
    for index in range(cases):
        case_id = f"case{index:03d}"
        spacing, origin = template_case_grid(index, seed)
        rng = np.random.default_rng([seed, index, 1])
        folder = target / case_id
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for modality in ("T1w", "CT"):
            image = template_on_grid(modality, spacing, origin)
            array = sitk.GetArrayFromImage(image)
            if modality == "T1w":
                array = np.clip(array, 0, None) * 1000.0 * rng.uniform(0.8, 1.2) + rng.normal(0, 10.0, array.shape)
            else:
                array = array + rng.normal(0, 5.0, array.shape)
            out = sitk.GetImageFromArray(array.astype(np.float32))
            out.CopyInformation(image)
            sitk.WriteImage(out, str(folder / f"{case_id}_{modality}.nii.gz"), True)
            images.append({"file": f"{case_id}/{case_id}_{modality}.nii.gz", "modality": modality,
                           "metadata": TEMPLATE_METADATA[modality]})
        mask = template_on_grid("mask", spacing, origin, nearest=True)
        sitk.WriteImage(sitk.Cast(mask > 0.5, sitk.sitkUInt8), str(folder / f"{case_id}_brainmask.nii.gz"), True)
        entries.append({"id": case_id, "subject": {"age": 40.0 + index, "sex": "F" if index % 2 else "M"},
                        "brain_mask": f"{case_id}/{case_id}_brainmask.nii.gz", "images": images})
    (target / "dataset.json").write_text(json.dumps({"name": "RealTemplates1mm", "description": "ICBM152 T1w and Rorden CT "
                                                     "templates at 1 mm and 1 x 1 x 1.2 mm (benchmarks/preprocessing_vs_nnunet.py)",
                                                     "cases": entries}, indent=1))


def resampling_quality(seed: int, target_spacing_zyx: tuple[float, float, float], repeats: int = 3) -> dict[str, Any]:
    """Each tool's resampling of one noise-free 1.2 mm T1w case to the target spacing, against the truth.

    Runs where both nnunetv2 and unisyn_v2 import (the nnU-Net venv, with the repository on sys.path).
    """
    import numpy as np
    import SimpleITK as sitk
    import torch

    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
    from unisyn_v2.preprocessing.resampling import compute_new_shape, resample_image

    torch.set_num_threads(1)
    spacing, origin = template_case_grid(1, seed)  # a 1 x 1 x 1.2 mm case
    case = sitk.GetArrayFromImage(template_on_grid("T1w", spacing, origin)) * 1000.0
    old_zyx = tuple(reversed(spacing))
    new_shape = tuple(int(v) for v in compute_new_shape(case.shape, old_zyx, target_spacing_zyx))
    effective = [o * n / m for o, n, m in zip(old_zyx, case.shape, new_shape)]  # FOV kept: (z, y, x)
    spacing_xyz = tuple(reversed(effective))
    centre_shift = [s_in * (0.5 * n / m - 0.5) for s_in, n, m in zip(spacing, reversed(case.shape), reversed(new_shape))]
    truth_origin = tuple(o + d for o, d in zip(origin, centre_shift))  # direction is diag(1, -1, 1): y flips
    truth_origin = (truth_origin[0], origin[1] - centre_shift[1], truth_origin[2])
    truth = sitk.GetArrayFromImage(template_on_grid("T1w", spacing_xyz, truth_origin, tuple(reversed(new_shape)))) * 1000.0
    brain = sitk.GetArrayFromImage(template_on_grid("mask", spacing_xyz, truth_origin, tuple(reversed(new_shape)), nearest=True)) > 0.5
    scale = float(np.percentile(truth[brain], 99.5) - np.percentile(truth[brain], 0.5))
    methods = {
        "unisyn_v2 order 1 (torch trilinear, its plans before issue 21)": lambda: resample_image(case[None], old_zyx, new_shape=new_shape, order=1)[0],
        "unisyn_v2 order 3 (cubic spline as matrix products, its plans)": lambda: resample_image(case[None], old_zyx, new_shape=new_shape, order=3)[0],
        "nnU-Net v2 order 3 (skimage cubic, its default)": lambda: resample_data_or_seg_to_shape(
            case[None], new_shape, old_zyx, target_spacing_zyx, is_seg=False, order=3, order_z=0)[0],
    }
    out: dict[str, Any] = {"case_spacing_xyz": list(spacing), "case_shape_zyx": list(case.shape), "target_spacing_zyx": list(target_spacing_zyx),
                           "output_shape_zyx": list(new_shape), "brain_voxels": int(brain.sum()), "scale_p995_p005": round(scale, 2),
                           "methods": {}}
    for name, function in methods.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = np.asarray(function(), dtype=np.float32)
            times.append(time.perf_counter() - started)
        error = (result - truth)[brain]
        out["methods"][name] = {"seconds": round(statistics.median(times), 3),
                                "rmse_percent_of_range": round(100 * float(np.sqrt(np.mean(error**2))) / scale, 3),
                                "mae_percent_of_range": round(100 * float(np.mean(np.abs(error))) / scale, 3),
                                "p99_abs_percent_of_range": round(100 * float(np.percentile(np.abs(error), 99)) / scale, 3)}
    return out

def make_raw_dataset(args: argparse.Namespace, raw_root: Path, notes: list[str]) -> Path:
    """The source unisyn raw dataset: an existing ``Dataset{ID}_*`` in ``raw_root``, else a new phantom."""
    existing = sorted(raw_root.glob(f"Dataset{args.dataset_id:03d}_*")) if raw_root.is_dir() else []
    if existing:
        notes.append(f"took the existing raw dataset {existing[0]}")
        return existing[0]
    target = raw_root / f"Dataset{args.dataset_id:03d}_Phantom"
    if args.generator == "templates":
        started = time.perf_counter()
        write_template_dataset(target, args.cases, args.seed)
        notes.append(f"real templates resampled to 1 mm / 1 x 1 x 1.2 mm ({args.cases} cases, "
                     f"{time.perf_counter() - started:.0f} s, not timed in the benchmark)")
        return target
    if args.generator == "phantom":
        command = [str(Path(sys.executable).parent / "unisyn_phantom"), "-d", str(args.dataset_id), "--cases", str(args.cases),
                   "--seed", str(args.seed), "--modalities", *args.modalities, "--output_dir", str(target),
                   "-np", str(args.num_processes)]
        if args.shape:
            command += ["--shape", *map(str, args.shape)]
        if args.voxel_size:
            command += ["--voxel_size", *map(str, args.voxel_size)]
        print("+", shlex.join(command), flush=True)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            notes.append(f"phantom: `{shlex.join(command)}` ({time.perf_counter() - started:.0f} s, not timed in the benchmark)")
            return target
        notes.append(f"unisyn_phantom failed (exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}); "
                     "fell back to tests/raw_fixtures.py:write_blob_dataset")
        shutil.rmtree(target, ignore_errors=True)
    sys.path.insert(0, str(REPO))
    from tests.raw_fixtures import write_blob_dataset  # noqa: E402 (test helper, only for the fallback)

    shape = tuple(args.shape) if args.shape else (96, 112, 96)
    spacing = tuple(args.voxel_size) if args.voxel_size else (1.5, 1.5, 1.5)
    write_blob_dataset(target, num_cases=args.cases, shape=shape, spacing_xyz=spacing, modalities=tuple(args.modalities), seed=args.seed)
    notes.append(f"blob dataset (tests/raw_fixtures.py:write_blob_dataset), shape {shape} (z, y, x), spacing {spacing} mm")
    return target


def select_cases(source: Path, modalities: list[str]) -> list[dict[str, Any]]:
    """Cases holding every requested modality and a brain mask, reduced to those images in that order."""
    description = json.loads((source / "dataset.json").read_text())
    selected = []
    for case in description["cases"]:
        by_modality = {image["modality"]: image for image in case["images"]}
        if case.get("brain_mask") and all(m in by_modality for m in modalities):
            selected.append({**case, "images": [by_modality[m] for m in modalities]})
    return selected


def write_unisyn_subset(source: Path, cases: list[dict[str, Any]], target: Path) -> None:
    """A unisyn raw dataset of exactly the selected cases and images (files copied, sidecars too)."""
    description = json.loads((source / "dataset.json").read_text())
    for case in cases:
        for relative in [case["brain_mask"], *(image["file"] for image in case["images"])]:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, target / relative)
            sidecar = (source / relative).with_name(Path(relative).name.split(".")[0] + ".json")
            if sidecar.is_file():
                shutil.copy2(sidecar, target / Path(relative).parent / sidecar.name)
    (target / "dataset.json").write_text(json.dumps({**description, "cases": cases}, indent=1))


def write_nnunet_dataset(source: Path, cases: list[dict[str, Any]], modalities: list[str], target: Path) -> None:
    """nnU-Net raw dataset: imagesTr/<case>_XXXX.nii.gz (channel = modality), labelsTr/<case>.nii.gz = brain mask."""
    import SimpleITK as sitk

    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir(parents=True)
    for case in cases:
        for channel, image in enumerate(case["images"]):
            shutil.copy2(source / image["file"], target / "imagesTr" / f"{case['id']}_{channel:04d}.nii.gz")
        mask = sitk.ReadImage(str(source / case["brain_mask"]))
        label = sitk.Cast(mask > 0, sitk.sitkUInt8)
        label.CopyInformation(sitk.ReadImage(str(source / case["images"][0]["file"])))  # nnU-Net checks geometry exactly
        sitk.WriteImage(label, str(target / "labelsTr" / f"{case['id']}.nii.gz"), True)
    channel_names = {str(i): ("CT" if m.upper() == "CT" else m) for i, m in enumerate(modalities)}
    (target / "dataset.json").write_text(json.dumps({"channel_names": channel_names, "labels": {"background": 0, "brain": 1},
                                                    "numTraining": len(cases), "file_ending": ".nii.gz",
                                                    "name": target.name}, indent=1))


def run_quality(args: argparse.Namespace, dataset: Path, work: Path) -> dict[str, Any] | None:
    """The resampling comparison in the nnU-Net venv, at the target spacing unisyn planned for this dataset."""
    import numpy as np

    description = json.loads((dataset / "dataset.json").read_text())
    import SimpleITK as sitk

    spacings = []
    for case in description["cases"]:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(dataset / case["images"][0]["file"]))
        reader.ReadImageInformation()
        spacings.append(tuple(reversed(reader.GetSpacing())))
    target = tuple(args.target_spacing) if args.target_spacing else tuple(float(v) for v in np.median(spacings, axis=0))
    out = work / "quality.json"
    spec = {"seed": args.seed, "target_spacing_zyx": target, "out": str(out)}
    command = [str(args.nnunet_venv / "bin" / "python"), str(Path(__file__).resolve()), "--quality-child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 or not out.is_file():
        print(f"resampling quality failed: {done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.read_text())


# --------------------------------------------------------------------------------------- report
def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for tool, tool_runs in runs.items():
        good = [r for r in tool_runs if r["returncode"] == 0]
        summary[tool] = {"runs_ok": len(good), "runs": len(tool_runs)}
        if good:
            for key in ("wall_s", "cpu_user_s", "cpu_sys_s", "peak_tree_rss_mib", "peak_tree_pss_mib", "max_single_process_rss_mib"):
                summary[tool][f"median_{key}"] = round(statistics.median(r[key] for r in good), 2)
            summary[tool]["min_wall_s"] = min(r["wall_s"] for r in good)
            summary[tool]["median_cpu_s"] = round(statistics.median(r["cpu_user_s"] + r["cpu_sys_s"] for r in good), 2)
    u, n = summary.get("unisyn", {}), summary.get("nnunet", {})
    if "median_wall_s" in u and "median_wall_s" in n:
        summary["ratio_nnunet_over_unisyn"] = {
            "wall": round(n["median_wall_s"] / u["median_wall_s"], 2),
            "cpu": round(n["median_cpu_s"] / u["median_cpu_s"], 2),
            "peak_tree_pss": round(n["median_peak_tree_pss_mib"] / u["median_peak_tree_pss_mib"], 2),
            "peak_tree_rss": round(n["median_peak_tree_rss_mib"] / u["median_peak_tree_rss_mib"], 2),
        }
    return summary


def markdown(result: dict[str, Any]) -> str:
    m, d, s = result["machine"], result["dataset"], result["summary"]
    lines = [f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Python {m['python']}; "
             f"load average at start {m['loadavg_at_start'][0]:.1f}.",
             f"Data: {d['cases']} cases x {len(d['modalities'])} channels ({', '.join(d['modalities'])}), "
             f"shapes (z, y, x) {d['shapes']}, spacings (x, y, z) mm {d['spacings']}, {d['raw_mib']} MiB of .nii.gz; "
             f"{result['num_processes']} processes, {result['repeats']} runs each (alternating order).", ""]
    lines += ["| | unisyn_v2 | nnU-Net v2 | nnU-Net / unisyn |", "|---|---|---|---|"]
    u, n = s.get("unisyn", {}), s.get("nnunet", {})
    ratio = s.get("ratio_nnunet_over_unisyn", {})

    def row(label: str, key: str, ratio_key: str | None) -> None:
        lines.append(f"| {label} | {u.get(key, 'n/a')} | {n.get(key, 'n/a')} | {ratio.get(ratio_key, '') if ratio_key else ''} |")

    row("median wall time (s)", "median_wall_s", "wall")
    row("min wall time (s)", "min_wall_s", None)
    row("median CPU time, user+sys (s)", "median_cpu_s", "cpu")
    row("median peak tree PSS (MiB)", "median_peak_tree_pss_mib", "peak_tree_pss")
    row("median peak tree RSS (MiB)", "median_peak_tree_rss_mib", "peak_tree_rss")
    row("largest single process RSS (MiB)", "median_max_single_process_rss_mib", None)
    lines.append(f"| preprocessed output (MiB) | {result['output_mib'].get('unisyn', 'n/a')} | {result['output_mib'].get('nnunet', 'n/a')} | |")
    lines += ["", "Runs (wall s / CPU s / peak PSS MiB / exit):"]
    for tool in ("unisyn", "nnunet"):
        cells = [f"{r['wall_s']} / {r['cpu_user_s'] + r['cpu_sys_s']:.1f} / {r['peak_tree_pss_mib']} / {r['returncode']}"
                 for r in result["runs"][tool]]
        lines.append(f"- {tool}: " + "; ".join(cells))
    lines += ["", "Commands (each with a fresh output folder):", "```"]
    lines += [result["commands"]["benchmark"], result["commands"]["unisyn"], result["commands"]["nnunet"], "```"]
    quality = result.get("resampling_quality")
    if quality:
        lines += ["", f"Resampling quality: one noise-free case at {quality['case_spacing_xyz']} mm (x, y, z), "
                      f"{'x'.join(map(str, quality['case_shape_zyx']))} -> {'x'.join(map(str, quality['output_shape_zyx']))} "
                      f"(target {quality['target_spacing_zyx']} mm z, y, x), against the template B-spline-resampled onto the output "
                      f"grid, in the brain ({quality['brain_voxels']} voxels); errors in % of the brain's p0.5-p99.5 range; one thread:", "",
                  "| method | s per volume | RMSE % | MAE % | p99 abs % |", "|---|---|---|---|---|"]
        for method, m in quality["methods"].items():
            lines.append(f"| {method} | {m['seconds']} | {m['rmse_percent_of_range']} | {m['mae_percent_of_range']} | "
                         f"{m['p99_abs_percent_of_range']} |")
    if result["notes"]:
        lines += ["", "Notes:"] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-id", type=int, default=990, help="dataset id for both tools (default 990)")
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help="unisyn raw folder to take Dataset{ID}_* from; generated there when missing (default: a temp folder)")
    parser.add_argument("--generator", choices=("phantom", "blob", "templates"), default="phantom",
                        help="how to make a missing dataset (phantom falls back to blob when unisyn_phantom fails; "
                             "templates: real templates at 1 mm and 1 x 1 x 1.2 mm, see above)")
    parser.add_argument("--quality", action=argparse.BooleanOptionalAction, default=None,
                        help="score each tool's resampling against the truth (default: on with --generator templates)")
    parser.add_argument("--quality-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=int, default=20, help="cases to generate (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="generated volume size (default: the phantom's 64^3; blob 96 112 96)")
    parser.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="generated voxel size in mm (default: the phantom's 3.2 mm; blob 1.5 mm)")
    parser.add_argument("--modalities", nargs="+", default=["T1w", "CT"],
                        help="channels: only cases holding all of them are used, by both tools (default T1w CT)")
    parser.add_argument("--target-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="force this target spacing in both tools (unisyn --overwrite_target_spacing, "
                             "nnU-Net -overwrite_target_spacing) so that both resample")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for both tools (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool (default 3)")
    parser.add_argument("--nnunet-venv", type=Path, default=DEFAULT_NNUNET_VENV, help=f"venv holding nnunetv2 (default {DEFAULT_NNUNET_VENV})")
    parser.add_argument("--unisyn-bin", type=Path, default=Path(sys.executable).parent, help="folder holding unisyn_plan_and_preprocess")
    parser.add_argument("--poll", type=float, default=0.1, help="memory polling interval in s (default 0.1)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "unisyn_preprocessing_vs_nnunet",
                        help="where result.json, result.md and the run logs go")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (datasets and preprocessed outputs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quality_child:  # in the nnU-Net venv: both tools' resampling functions in one process
        spec = json.loads(args.quality_child)
        sys.path.insert(0, str(REPO))
        Path(spec["out"]).write_text(json.dumps(resampling_quality(spec["seed"], tuple(spec["target_spacing_zyx"]))))
        return 0
    nnunet_bin = args.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess"
    unisyn_bin = args.unisyn_bin / "unisyn_plan_and_preprocess"
    for executable in (nnunet_bin, unisyn_bin):
        if not executable.is_file():
            print(f"missing {executable}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="unisyn_bench_pp_"))
    notes: list[str] = []
    try:
        source = make_raw_dataset(args, args.raw_dir or work / "source_raw", notes)
        cases = select_cases(source, args.modalities)
        if not cases:
            print(f"no case of {source} has all of {args.modalities} and a brain mask", file=sys.stderr)
            return 2
        total = len(json.loads((source / "dataset.json").read_text())["cases"])
        if len(cases) < total:
            notes.append(f"{len(cases)} of {total} cases hold all of {args.modalities}; both tools get only those")
        name = f"Dataset{args.dataset_id:03d}_Bench"
        unisyn_raw, nnunet_raw = work / "unisyn_raw", work / "nnunet_raw"
        write_unisyn_subset(source, cases, unisyn_raw / name)
        write_nnunet_dataset(unisyn_raw / name, cases, args.modalities, nnunet_raw / name)

        import SimpleITK as sitk

        shapes, spacings = set(), set()
        for case in cases:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(unisyn_raw / name / case["images"][0]["file"]))
            reader.ReadImageInformation()
            shapes.add(tuple(reversed(reader.GetSize())))
            spacings.add(tuple(round(v, 3) for v in reader.GetSpacing()))
        dataset = {"source": str(source), "name": name, "cases": len(cases), "modalities": args.modalities,
                   "shapes": sorted(shapes)[:4], "spacings": sorted(spacings)[:4], "raw_mib": folder_mib(nnunet_raw / name / "imagesTr")}

        p = str(args.num_processes)
        unisyn_cmd = [str(unisyn_bin), "-d", str(args.dataset_id), "-np", p, "--verify_dataset_integrity", "--no_pbar"]
        nnunet_cmd = [str(nnunet_bin), "-d", str(args.dataset_id), "-np", p, "-npfp", p, "-c", "3d_fullres",
                      "--verify_dataset_integrity", "--no_pbar"]
        if args.target_spacing:
            unisyn_cmd += ["--overwrite_target_spacing", *map(str, args.target_spacing)]
            nnunet_cmd += ["-overwrite_target_spacing", *map(str, args.target_spacing)]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("UNISYN_", "nnUNet_"))}
        runs: dict[str, list[dict[str, Any]]] = {"unisyn": [], "nnunet": []}
        outputs: dict[str, float] = {}
        for repeat in range(args.repeats):
            order = ("unisyn", "nnunet") if repeat % 2 == 0 else ("nnunet", "unisyn")
            for tool in order:
                out_dir = work / f"{tool}_pre_{repeat}"
                if tool == "unisyn":
                    env = {**base_env, "UNISYN_RAW": str(unisyn_raw), "UNISYN_PREPROCESSED": str(out_dir),
                           "UNISYN_RESULTS": str(work / "unisyn_results")}
                    command = unisyn_cmd
                else:
                    env = {**base_env, "nnUNet_raw": str(nnunet_raw), "nnUNet_preprocessed": str(out_dir),
                           "nnUNet_results": str(work / "nnunet_results")}
                    command = nnunet_cmd
                record = run_measured(command, env, args.out / f"{tool}_run{repeat}.log", args.poll)
                record["repeat"] = repeat
                runs[tool].append(record)
                outputs[tool] = folder_mib(out_dir) if out_dir.is_dir() else 0.0
                print(f"[{repeat + 1}/{args.repeats}] {tool:6s} exit {record['returncode']} wall {record['wall_s']:7.2f} s  "
                      f"cpu {record['cpu_user_s'] + record['cpu_sys_s']:7.2f} s  peak PSS {record['peak_tree_pss_mib']:7.1f} MiB  "
                      f"RSS {record['peak_tree_rss_mib']:7.1f} MiB  load {record['loadavg_after'][0]:.1f}", flush=True)
                if record["returncode"] != 0:
                    print(Path(record["log"]).read_text()[-3000:], file=sys.stderr)
                if not args.keep:
                    shutil.rmtree(out_dir, ignore_errors=True)

        quality = None
        if args.quality if args.quality is not None else args.generator == "templates":
            quality = run_quality(args, unisyn_raw / name, work)
        benchmark_cmd = shlex.join([Path(sys.executable).name, "benchmarks/preprocessing_vs_nnunet.py",
                                    *(argv if argv is not None else sys.argv[1:])])
        result = {
            "machine": machine | {"loadavg_at_end": list(os.getloadavg())},
            "dataset": dataset, "num_processes": args.num_processes, "repeats": args.repeats,
            "commands": {
                "benchmark": benchmark_cmd,
                "unisyn": "UNISYN_RAW=<work>/unisyn_raw UNISYN_PREPROCESSED=<fresh> " + shlex.join(["unisyn_plan_and_preprocess", *unisyn_cmd[1:]]),
                "nnunet": "nnUNet_raw=<work>/nnunet_raw nnUNet_preprocessed=<fresh> nnUNet_results=<tmp> "
                          + shlex.join(["nnUNetv2_plan_and_preprocess", *nnunet_cmd[1:]]),
            },
            "versions": {"nnunetv2": subprocess.run([str(args.nnunet_venv / "bin" / "python"), "-c",
                                                     "import importlib.metadata as m; print(m.version('nnunetv2'))"],
                                                    capture_output=True, text=True).stdout.strip()},
            "runs": runs, "output_mib": outputs, "summary": summarise(runs), "notes": notes, "resampling_quality": quality,
        }
        (args.out / "result.json").write_text(json.dumps(result, indent=1))
        text = markdown(result)
        (args.out / "result.md").write_text(text)
        print("\n" + text)
        print(f"written: {args.out / 'result.json'}, {args.out / 'result.md'}")
        return 0 if all(r["returncode"] == 0 for tool_runs in runs.values() for r in tool_runs) else 1
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
