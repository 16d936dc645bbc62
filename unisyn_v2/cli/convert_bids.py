"""``unisyn_convert_bids``: a BIDS tree -> a raw unisyn_v2 dataset ``$UNISYN_RAW/DatasetXXX_Name``.

Thin over :func:`unisyn_v2.dataset.bids_convert.convert_bids`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.dataset.bids_convert import ConversionSettings, convert_bids
from unisyn_v2.dataset.ids import dataset_name_from_id
from unisyn_v2.io_utils import read_json
from unisyn_v2.paths import raw_dir

logger = logging.getLogger(__name__)

EPILOG = """\
found: sub-*/[ses-*/]anat/*_<suffix>.nii[.gz] (T1w, T2w, FLAIR, PDw, T2starw, swi; T1w with ce- is T1CE),
pet/*_pet.nii[.gz] (modality from TracerName or trc-: FDG, AV45/florbetapir, tau tracers) and CT as
ct/*_ct.nii[.gz] or anat/*_CT.nii[.gz]; one case per subject and session (sub-01, sub-01_ses-2).
metadata: sidecars with BIDS inheritance, seconds -> ms; PET uptake = ScanStart - InjectionStart; voxel
size from the header; age and sex from participants.tsv (a session's age in sub-*_sessions.tsv wins).
several images of one modality: --run N keeps run N (no run- = run 1); otherwise the smallest voxel
volume, then no acq- label, then the highest run, then the name; --all_runs keeps them all.
registration: every image rigidly to the case's reference (--reference, else T1w, T2w, FLAIR, ...),
Mattes mutual information, 3-level pyramid, best of three centred starts; a result moving the head by
at most --min_correction voxels is registration noise (headers' alignment kept, voxels untouched when
already on the reference grid); other images are resampled onto the reference grid (linear), the
transform applied is written beside them (<case>_<modality>_to-<reference>.tfm, reference -> image).
brain mask: --brain_mask auto (from the case's CT, else PET, else the reference: threshold, 4 mm
erosion, largest component, dilation, holes filled; a heuristic) or --brain_mask DERIVATIVES
(sub-*/[ses-*/]anat/*desc-brain*_mask.nii[.gz], e.g. fMRIPrep's or the phantom's export).
the BIDS files are never modified: images are hard-linked (--link, default; copied across file systems)
or copied (--copy). conversion_report.json beside dataset.json lists, per case, the images, the file
each metadata field came from, the registration metric before and after, and every file skipped and why.

example: unisyn_convert_bids bids/ -d 1 --name MyCohort --brain_mask bids/derivatives/synthstrip
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="unisyn_convert_bids", description="Convert a BIDS dataset into a raw unisyn_v2 dataset.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bids_root", type=Path, help="top folder of the BIDS dataset")
    parser.add_argument("-d", "--dataset_id", type=int, required=True, help="dataset id: writes $UNISYN_RAW/Dataset{ID:03d}_{name}")
    parser.add_argument("--name", default=None, help="dataset name (default: the BIDS dataset_description Name, else BIDS)")
    parser.add_argument("--modalities", nargs="+", default=None,
                        help="modalities or BIDS suffixes to take (e.g. T1w T2w FLAIR PDw CT FDG-PET; default all found)")
    parser.add_argument("--reference", default="T1w", help="modality every image is registered and resampled to (default T1w)")
    placing = parser.add_mutually_exclusive_group()
    placing.add_argument("--link", dest="link", action="store_true", default=True,
                         help="hard-link images that need no resampling (default)")
    placing.add_argument("--copy", dest="link", action="store_false", help="copy them instead")
    parser.add_argument("--run", type=int, default=None, help="keep this run of every modality where a case has it")
    parser.add_argument("--all_runs", action="store_true", help="keep every run/acquisition (a modality several times per case)")
    parser.add_argument("--brain_mask", default=None, metavar="auto|DERIVATIVES",
                        help="'auto' derives a mask per case; a derivatives folder provides them (default: no masks)")
    parser.add_argument("--min_correction", type=float, default=0.25, metavar="VOXELS",
                        help="registrations moving the head by at most this many reference voxels are not applied (default 0.25)")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing non-empty dataset folder")
    add_common_arguments(parser)
    return parser


def _convert(args: argparse.Namespace) -> int:
    if args.run is not None and args.all_runs:
        raise ValueError("--run and --all_runs exclude each other; pick one")
    if args.min_correction < 0:
        raise ValueError(f"--min_correction must be >= 0, got {args.min_correction}")
    name = args.name
    if name is None:
        description = args.bids_root / "dataset_description.json"
        given = read_json(description).get("Name") if description.is_file() else None
        name = "".join(c if c.isalnum() or c in "_-." else "_" for c in str(given or "BIDS")).strip("_") or "BIDS"
    output = raw_dir() / dataset_name_from_id(args.dataset_id, name)
    settings = ConversionSettings(modalities=args.modalities, reference=args.reference, link=args.link, run=args.run,
                                  all_runs=args.all_runs, brain_mask=args.brain_mask,
                                  min_correction_voxels=args.min_correction, threads=args.threads or None)
    report = convert_bids(args.bids_root, output, name, settings, overwrite=args.overwrite)
    for line in report.summary_lines():
        logger.info("%s", line)
    logger.info("wrote %s (%d cases, %d file(s) skipped); report: %s", output / "dataset.json", len(report.cases),
                len(report.skipped), output / "conversion_report.json")
    if report.problems:
        raise ValueError(f"{output}: the converted dataset fails verification ({len(report.problems)} problem(s)); the "
                         f"first: {report.problems[0]}")
    print(output)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point ``unisyn_convert_bids``."""
    return run_cli(_convert, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
