"""``unisyn_predict``: synthesise a target modality for every case of the inputs (thin over UniSynPredictor)."""

from __future__ import annotations

import argparse

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.inference.model_discovery import DEFAULT_CHECKPOINT, find_model_folder
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor
from unisyn_v2.models.rendering import rendering_network

EPILOG = """\
inputs: a folder with a dataset.json (its cases), a BIDS tree (one case per subject and session, as
unisyn_convert_bids finds them; brain masks from its derivatives/), or image files / folders of images. Files named
<case>_<modality>.nii.gz (e.g. sub-01_T1w.nii.gz, sub-01_CT.nii.gz) are grouped into case <case>;
<case>_brainmask.nii.gz is its brain mask; other files are one case each and need --source.
Metadata comes from BIDS sidecars (<image stem>.json), --source, or the dataset.json; an image with
none is described by its modality's typical metadata in the training set (with a warning).
source choice with several images per case: --source-image, else a modality trained for this target,
then the target's family, then T1w, then file order (images of the target's modality only as a last resort).
outputs: <case>_<target>.nii.gz (float32, the source's exact geometry; CT in HU, PET in SUV or SUVR,
MRI in normalised units x 1000) and <case>_<target>.json (target prompt, sources, model, version).

example: unisyn_predict -i in/ -o out/ -d 1 -tr gfm -c 2.5d -f 0 --target FDG-PET
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="unisyn_predict", description="Synthesise a target modality from brain images.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", nargs="+", required=True, help="folder(s) and/or image file(s)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--bids_out", default=None, metavar="DERIV_ROOT",
                        help="also write the predictions as BIDS derivatives: DERIV_ROOT/unisyn/sub-*/[ses-*/]anat/"
                             "sub-*_desc-synth_<suffix>.nii.gz (PET in pet/, CT in ct/) + sidecars + dataset_description.json")
    parser.add_argument("--target", required=True,
                        help="target: a modality name (typical training metadata fills the prompt), a full prompt, or a JSON file")
    parser.add_argument("--source", default=None,
                        help="describes input images without a modality in their name: modality name, full prompt or JSON file")
    parser.add_argument("--source-image", "--source_image", dest="source_image", default=None,
                        help="use this image of the (single) case as the source")
    model = parser.add_argument_group("model (either -m, or -d with -tr and -c)")
    model.add_argument("-m", "--model_folder", default=None, help="a <Trainer>__<plans>__<config> folder")
    model.add_argument("-d", "--dataset", default=None, help="dataset id or name")
    model.add_argument("-tr", "--trainer", default="gfm",
                       help="trainer class or short name (default gfm); package.module:Class imports your own trainer, "
                            "which a model folder's trainer.json may then name (a file alone never imports code)")
    model.add_argument("-c", "--configuration", default="2.5d", help="configuration (default 2.5d)")
    model.add_argument("-p", "--plans_name", default="unisynPlans")
    model.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: every numbered fold holding --chk, else fold_all)")
    model.add_argument("--chk", default=DEFAULT_CHECKPOINT, help=f"checkpoint file name (default {DEFAULT_CHECKPOINT})")
    run = parser.add_argument_group("prediction")
    run.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    run.add_argument("--step_size", type=float, default=0.5, help="tile step as a fraction of the tile (default 0.5)")
    run.add_argument("--tile_batch_size", type=int, default=4, help="tiles per forward pass (default 4)")
    run.add_argument("--tta", action="store_true",
                     help="mirroring test-time augmentation over the axes the trainer mirrored (trainer.json mirror_axes; "
                          "left-right by default: 2x the forward passes)")
    run.add_argument("--not_on_device", action="store_true", help="accumulate tiles in host memory (large volumes)")
    run.add_argument("-npp", "--num_processes", type=int, default=1,
                     help="cases predicted in parallel worker processes, each loading the model and holding one case "
                          "at a time (default 1: in this process)")
    run.add_argument("--continue_prediction", action="store_true", help="skip cases whose outputs are complete")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument("--keep_background", action="store_true",
                     help="keep the network's values outside the source's head (default: air, -1000 HU, for CT and 0 "
                          "for MRI/PET there; the head is the source's thresholded, hole-filled foreground)")
    run.add_argument("--export_qmaps", action="store_true",
                     help="qMRI models (trainer gfm_qmri): also write the effective maps <case>_qmap-PD/-T1/-T2/-T2star.nii.gz "
                          "(T1, T2, T2* in ms, T1 at the target's field strength; PD relative) and <case>_qmaps.json")
    run.add_argument("--output_spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                     help="write on a new grid with this voxel size in mm (x y z), the input's origin, direction and "
                          "extent: a model planned with decoder liif synthesises there directly; any other model's "
                          "native prediction is resampled with a B-spline (the sidecar's output_grid says which)")
    run.add_argument("--disable_progress_bar", action="store_true")
    add_common_arguments(parser)
    return parser


def _predict(args: argparse.Namespace) -> int:
    if args.model_folder is None and args.dataset is None:
        raise ValueError("pass -m MODEL_FOLDER, or -d DATASET with -tr TRAINER and -c CONFIGURATION")
    if args.num_processes < 1:
        raise ValueError(f"-npp must be >= 1, got {args.num_processes}")
    if args.step_size <= 0 or args.step_size > 1:
        raise ValueError(f"--step_size must be in (0, 1], got {args.step_size}")
    from unisyn_v2.models.registry import is_command_line_dotted_path, resolve_command_line_trainer

    if is_command_line_dotted_path(args.trainer):  # the user's own command line: their trainer may be imported
        resolve_command_line_trainer(args.trainer)
    folder = args.model_folder or find_model_folder(args.dataset, args.trainer, args.configuration, args.plans_name)
    settings = PredictionSettings(step_size=args.step_size, tile_batch_size=args.tile_batch_size, use_mirroring=args.tta,
                                  accumulate_on_device=not args.not_on_device, progress=not args.disable_progress_bar,
                                  background_outside_head=not args.keep_background, export_qmaps=args.export_qmaps,
                                  output_spacing=tuple(args.output_spacing) if args.output_spacing else None)
    predictor = UniSynPredictor.from_model_folder(folder, args.folds, args.chk, args.device, settings)
    if args.export_qmaps and not all(rendering_network(n) is not None for n in predictor.networks):
        raise ValueError(f"--export_qmaps: {folder} has no quantitative-map head (trainer "
                         f"{predictor.trainer_info.get('trainer_name')}); train gfm_qmri for quantitative maps")
    paths = predictor.predict(args.input, args.output, args.target, args.source, args.source_image,
                              args.continue_prediction, args.overwrite, args.num_processes)
    if args.bids_out is not None:
        from unisyn_v2.inference.bids_output import write_bids_derivatives

        paths = [*paths, *write_bids_derivatives(paths, args.bids_out)]
    for path in paths:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point ``unisyn_predict``."""
    return run_cli(_predict, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
