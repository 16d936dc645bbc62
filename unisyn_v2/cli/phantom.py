"""``unisyn_phantom`` writes a raw phantom dataset ``<raw>/DatasetXXX_Name``; ``unisyn_render_phantom``
renders one of its cases at any protocol (noise-free ground truth for arbitrary metadata)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.dataset.image_io import write_image
from unisyn_v2.metadata.modalities import get_modality
from unisyn_v2.metadata.prompts import parse_prompt
from unisyn_v2.paths import raw_dir

from unisyn_v2.phantom.generator import DEFAULT_LESION_FRACTION, PHANTOM_MODALITIES, PhantomSpec, generate_phantom_dataset
from unisyn_v2.phantom.pathology import LESION_KINDS, LESION_LABELS
from unisyn_v2.phantom.protocols import DEFAULT_PROTOCOL_RANGES, PROTOCOL_RANGES
from unisyn_v2.phantom.render import PhantomCase, prompt_patch, read_phantom_spec

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
    parser.add_argument("--protocol_ranges", choices=sorted(PROTOCOL_RANGES), default=DEFAULT_PROTOCOL_RANGES,
                        help="MR protocol range set: clinical (narrow, as sites scan; default) or wide (TE, TR, TI and "
                             "flip angle over ranges where they change the contrast); see unisyn_v2.phantom.protocols")
    parser.add_argument("--protocols_per_modality", type=int, default=1, metavar="N",
                        help="image every MR modality of a case N times, each at its own protocol drawn from the range "
                             "set (same session; files sub-001_T2w, sub-001_run-2_T2w, ...), so protocol effects are "
                             "not confounded with the subject; CT and PET stay one image (default 1)")
    parser.add_argument("--tissue_maps", type=Path, default=None,
                        help="folder of tissue probability maps gm/wm/csf[.nii.gz] (+ optional ones) to use as anatomy")
    parser.add_argument("--lesions", default=None, metavar="KINDS",
                        help=f"pathology, comma-separated: {','.join(LESION_KINDS)} or all (default none). Cases with "
                             "pathology get one lesion of every kind with its own MR/CT/PET physics; every case gets a "
                             "label map <case>/<case>_lesions.nii.gz ("
                             + ", ".join(f"{k} {v}" for k, v in LESION_LABELS.items()) + "), listed in phantom.json")
    parser.add_argument("--lesion_fraction", type=float, default=DEFAULT_LESION_FRACTION, metavar="F",
                        help=f"fraction of the cases that get pathology, 0-1 (default {DEFAULT_LESION_FRACTION})")
    parser.add_argument("--no_sinuses", action="store_true",
                        help="heads without air sinuses (the anatomy of phantoms made before they existed)")
    parser.add_argument("--output_dir", type=Path, default=None, help="output folder (default <raw>/Dataset{ID:03d}_{name})")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    parser.add_argument("-np", "--num_processes", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--bids", type=Path, default=None, metavar="DIR",
                        help="also write the dataset as a BIDS tree in DIR (sidecars in seconds, participants.tsv, masks "
                             "in DIR/derivatives/unisyn_phantom), e.g. to try unisyn_convert_bids on it")
    parser.add_argument("--thick_slices", type=float, default=None, metavar="MM",
                        help="also write every image acquired with slices MM thick along z (slice profile, then sampling "
                             "at the slice centres; unisyn_v2.phantom.slice_profile) to <dataset>/thick_slice/"
                             "<case>_<modality>.nii.gz with sidecars and brain masks, e.g. to try unisyn_predict "
                             "--output_spacing on them")
    parser.add_argument("--slice_profile", choices=("gaussian", "rect"), default="gaussian",
                        help="--thick_slices profile: gaussian with FWHM = thickness (default) or an ideal boxcar")
    parser.add_argument("--slice_spacing", type=float, default=None, metavar="MM",
                        help="--thick_slices centre-to-centre distance (default: the thickness, contiguous slices)")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments or a refused folder)."""
    return run_cli(_generate, build_parser().parse_args(argv))  # logging (--verbose) and threads as every command


def _generate(args: argparse.Namespace) -> int:
    if args.dataset_id < 0 or args.dataset_id > 999:
        logger.error("dataset id must be within 0-999 (got %d)", args.dataset_id)
        return 2
    output = args.output_dir if args.output_dir is not None else raw_dir() / f"Dataset{args.dataset_id:03d}_{args.name}"
    started = time.perf_counter()
    try:
        generate_phantom_dataset(output, args.cases, args.seed, shape=tuple(args.shape), voxel_size_mm=tuple(args.voxel_size),
                                 modalities=args.modalities, skull_strip=args.skull_strip, tissue_maps_dir=args.tissue_maps, complete=args.complete,
                                 overwrite=args.overwrite, name=args.name, num_processes=args.num_processes, progress=True,
                                 protocol_ranges=args.protocol_ranges,
                                 protocols_per_modality=args.protocols_per_modality, lesions=args.lesions,
                                 lesion_fraction=args.lesion_fraction, sinuses=not args.no_sinuses)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    logger.info("dataset %s ready in %.1f s: %s", args.name, time.perf_counter() - started, output / "dataset.json")
    if args.thick_slices is not None:
        from unisyn_v2.phantom.slice_profile import write_thick_slice_dataset

        try:
            write_thick_slice_dataset(output, args.thick_slices, args.slice_spacing, args.slice_profile)
        except ValueError as error:
            logger.error("--thick_slices: %s", error)
            return 2
    if args.bids is not None:
        from unisyn_v2.phantom.bids_export import export_bids

        try:
            export_bids(output, args.bids, overwrite=args.overwrite, name=args.name)
        except (FileExistsError, ValueError) as error:
            logger.error("%s", error)
            return 2
    return 0


_SPEC_OPTIONS = ("seed", "shape", "voxel_size", "modalities", "protocol_ranges", "skull_strip", "tissue_maps")
# protocols_per_modality is not among them: it says which files a dataset has, not what any image is
# (repetition r is the same image for every N >= r), so --repetition needs no generation option.


def build_render_parser() -> argparse.ArgumentParser:
    """Arguments of ``unisyn_render_phantom``."""
    parser = argparse.ArgumentParser(
        prog="unisyn_render_phantom",
        description="Render one phantom case at any protocol: the same head, subject and scanner as case CASE of the "
                    "dataset that --dataset (or --seed and the generation options) names, without noise unless --noise. "
                    "Fields the protocol leaves out keep the case's own values.",
        epilog='example: unisyn_render_phantom --seed 0 --case sub-003 --modality T2w --metadata \'{"echo_time": 200}\' '
               "-o t2w_te200.nii.gz")
    phantom = parser.add_argument_group("which phantom (--dataset, or --seed and the options it was generated with)")
    phantom.add_argument("--dataset", type=Path, default=None,
                         help="a dataset folder written by unisyn_phantom (reads its phantom.json)")
    phantom.add_argument("--seed", type=int, default=None, help="the dataset's random seed")
    phantom.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None, help="default 64 64 64")
    phantom.add_argument("--voxel_size", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None, help="mm; default 3.2 3.2 3.2")
    phantom.add_argument("--modalities", nargs="+", default=None,
                         help="the modalities the dataset drew from (they fix each case's scanner session; default all)")
    phantom.add_argument("--protocol_ranges", choices=sorted(PROTOCOL_RANGES), default=None,
                         help=f"the dataset's protocol range set (default {DEFAULT_PROTOCOL_RANGES})")
    phantom.add_argument("--skull_strip", action="store_true", default=None, help="the dataset was skull-stripped")
    phantom.add_argument("--tissue_maps", type=Path, default=None, help="the tissue maps the dataset used as anatomy")
    what = parser.add_argument_group("what to render")
    what.add_argument("--case", required=True, help="case id (sub-003) or its number (3, counting from 1 as the ids do)")
    what.add_argument("--modality", default=None, help="modality to render (taken from --prompt when given there)")
    protocol = what.add_mutually_exclusive_group()
    protocol.add_argument("--metadata", default=None,
                          help="JSON object (or a .json file) of fields to change, e.g. '{\"echo_time\": 200}'; "
                               "null removes a field ('\"inversion_time\": null' makes an MPRAGE a spoiled GRE)")
    protocol.add_argument("--prompt", default=None, help="a structured prompt ('Modality: T2w; Scanner: 3.0 ...') stating the protocol")
    what.add_argument("--repetition", type=int, default=1, metavar="R",
                      help="start from the case's R-th image of the MR modality (datasets written with "
                           "--protocols_per_modality; its protocol, noise and gain; default 1)")
    what.add_argument("--noise", action="store_true", help="add the acquisition's noise and MR bias field, as in the dataset")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", type=Path, required=True, help="image file to write (.nii.gz)")
    out.add_argument("--mask", type=Path, default=None, help="also write the case's brain mask here")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_common_arguments(parser)
    return parser


def _spec_from_args(args: argparse.Namespace) -> PhantomSpec:
    if args.dataset is not None:
        given = [f"--{name}" for name in _SPEC_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"--dataset fixes the phantom; drop {', '.join(given)}")
        return read_phantom_spec(args.dataset)
    if args.seed is None:
        raise ValueError("say which phantom: --dataset <folder written by unisyn_phantom>, or --seed and its options")
    optional: dict[str, Any] = {"shape": args.shape, "voxel_size": args.voxel_size, "protocol_ranges": args.protocol_ranges,
                                "skull_strip": args.skull_strip, "tissue_maps_dir": args.tissue_maps,
                                "modalities": None if args.modalities is None else tuple(args.modalities)}
    return PhantomSpec(args.seed, **{k: v for k, v in optional.items() if v is not None})


def _case_arg(text: str) -> int | str:
    """``sub-003`` as given; a bare number counts from 1 like the case ids."""
    text = text.strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError(f"--case numbers count from 1 like the case ids (got {text})")
        return int(text) - 1
    return text


def _metadata_arg(text: str) -> dict[str, Any]:
    """--metadata: a JSON object inline or in a file."""
    source = "--metadata"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"--metadata: {text!r} is neither a JSON object nor a file")
        text, source = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: must be a JSON object of metadata fields (got {type(data).__name__})")
    return data


def _render(args: argparse.Namespace) -> int:
    outputs = [args.output] + ([args.mask] if args.mask is not None else [])
    for path in outputs:
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    spec = _spec_from_args(args)
    modality, patch = args.modality, None
    if args.prompt is not None:
        description = parse_prompt(args.prompt)
        if modality is not None and get_modality(modality).name != description.modality:
            raise ValueError(f"--modality {modality} contradicts the prompt's modality {description.modality}")
        modality = description.modality
        patch = prompt_patch(description.metadata, get_modality(modality).family)
        if description.subject.to_dict():
            logger.info("the prompt's subject fields are not used: the case's own subject is rendered")
    elif args.metadata is not None:
        patch = _metadata_arg(args.metadata)
    if modality is None:
        raise ValueError("say which modality: --modality, or a --prompt naming it")
    started = time.perf_counter()
    case = PhantomCase(spec, _case_arg(args.case))
    metadata = case.metadata_for(modality, patch, args.repetition)
    image = case.render(modality, patch, noise=args.noise, repetition=args.repetition)  # the patch: removals must not be refilled
    write_image(args.output, image, case.geometry)
    if args.mask is not None:
        write_image(args.mask, case.anatomy.mask, case.geometry, dtype=np.uint8)
    logger.info("case %s %s%s (%s, %s) in %.1f s -> %s; metadata %s", case.case_id, get_modality(modality).name,
                f" repetition {args.repetition}" if args.repetition != 1 else "",
                "with noise" if args.noise else "noise-free", f"protocol ranges {spec.protocol_ranges}",
                time.perf_counter() - started, args.output, json.dumps(metadata.to_dict()))
    return 0


def render_main(argv: list[str] | None = None) -> int:
    """Entry point of ``unisyn_render_phantom``; exit 2 with one error line for bad input."""
    return run_cli(_render, build_render_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
