"""``unisyn_phantom``: write a raw phantom dataset ``<raw>/DatasetXXX_Name`` from the command line."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from unisyn_v2.paths import raw_dir

from .generator import PHANTOM_MODALITIES, generate_phantom_dataset

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser (kept separate so the options can be documented and tested)."""
    parser = argparse.ArgumentParser(prog="unisyn_phantom", description=__doc__)
    parser.add_argument("-d", "--dataset_id", type=int, required=True, help="dataset id: folder Dataset{ID:03d}_{name}")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same dataset (default 0)")
    parser.add_argument("--name", default="Phantom", help="dataset name (default Phantom)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=(64, 64, 64),
                        help="volume size in voxels (default 64 64 64)")
    parser.add_argument("--voxel_size", type=float, nargs=3, metavar=("X", "Y", "Z"), default=(3.2, 3.2, 3.2),
                        help="voxel size in mm (default 3.2 3.2 3.2, a head fits in 64 voxels)")
    parser.add_argument("--modalities", nargs="+", default=None,
                        help=f"modalities to draw from (default all: {' '.join(PHANTOM_MODALITIES)})")
    parser.add_argument("--complete", action="store_true",
                        help="every case gets every modality (paired data) instead of a random availability pattern")
    parser.add_argument("--skull_strip", action="store_true", help="zero everything outside the brain mask")
    parser.add_argument("--tissue_maps", type=Path, default=None,
                        help="folder of tissue probability maps gm/wm/csf[.nii.gz] (+ optional ones) to use as anatomy")
    parser.add_argument("--output_dir", type=Path, default=None, help="output folder (default <raw>/Dataset{ID:03d}_{name})")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    parser.add_argument("-np", "--num_processes", type=int, default=1, help="worker processes (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments or a refused folder)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.dataset_id < 0 or args.dataset_id > 999:
        logger.error("dataset id must be within 0-999 (got %d)", args.dataset_id)
        return 2
    output = args.output_dir if args.output_dir is not None else raw_dir() / f"Dataset{args.dataset_id:03d}_{args.name}"
    started = time.perf_counter()
    try:
        generate_phantom_dataset(output, args.cases, args.seed, shape=tuple(args.shape), voxel_size_mm=tuple(args.voxel_size),
                                 modalities=args.modalities, skull_strip=args.skull_strip, tissue_maps_dir=args.tissue_maps, complete=args.complete,
                                 overwrite=args.overwrite, name=args.name, num_processes=args.num_processes, progress=True)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    logger.info("dataset %s ready in %.1f s: %s", args.name, time.perf_counter() - started, output / "dataset.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
