"""``unisyn_plan_and_preprocess`` and its single steps: thin parsers over :mod:`experiment_planning.api`."""

from __future__ import annotations

import argparse
import sys

from unisyn_v2.cli.common import EXIT_USER_ERROR, add_common_arguments, run_cli
from unisyn_v2.dataset.description import DatasetError
from unisyn_v2.experiment_planning import api
from unisyn_v2.experiment_planning.planner import DEFAULT_PLANS_NAME
from unisyn_v2.contracts.plans import NETWORK_DECODERS, NEUROCLIP_IMAGE_ENCODERS


def _dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id (1, 001) or name (Dataset001_Name)")


def _fingerprint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify_dataset_integrity", action="store_true", help="check every file before fingerprinting")
    parser.add_argument("--clean", action="store_true", help="recompute the fingerprint even if the raw data is unchanged")


def _plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-pl", "--planner", default="auto",
                        help="preset (auto, cpu, small, medium, large, paper) or 'package.module:function' (default auto)")
    parser.add_argument("--gpu_memory_gb", type=float, default=None, help="memory budget; default: free memory of the GPU, CPU preset without one")
    parser.add_argument("--overwrite_target_spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None)
    parser.add_argument("-c", "--configurations", nargs="+", default=["2.5d", "3d"], choices=["2.5d", "3d"])
    parser.add_argument("--loss_region", nargs="+", default=None, metavar="FAMILY=REGION",
                        help="where the synthesis loss counts per target family: brain or head (default CT=head "
                             "MRI=brain PET=brain; e.g. --loss_region PET=head)")
    parser.add_argument("--lesion_oversample", type=float, default=None, metavar="F",
                        help="share of training patches centred on a lesion of the cases with a lesion_mask (default 0.33; "
                             "BENCHMARKS.md, 'Synthesis inside lesions': 0.66 with --lesion_weight 5 closes most of the gap)")
    parser.add_argument("--lesion_weight", type=float, default=None, metavar="W",
                        help="synthesis-loss weight inside lesions (default 1)")
    parser.add_argument("--decoder_3d", default=None, choices=NETWORK_DECODERS,
                        help="decoder of the 3d configuration: conv (default) or liif (TUMSyn's implicit decoder: "
                             "unisyn_train -c 3d, then unisyn_predict --output_spacing writes any voxel size)")
    parser.add_argument("--neuroclip_image_encoder", default=None, choices=NEUROCLIP_IMAGE_ENCODERS,
                        help="NeuroCLIP's image tower: cnn (default) or vit (TUMSyn's 3D ViT)")


def plan_choices(args: argparse.Namespace) -> api.PlanChoices:
    """The plan options of the command line (FAMILY=REGION pairs checked here, values by the plans' validation)."""
    regions: dict[str, str] = {}
    for item in args.loss_region or []:
        family, sep, region = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --loss_region takes FAMILY=REGION pairs (e.g. PET=head), got {item!r}")
        regions[family.strip().upper()] = region.strip().lower()
    return api.PlanChoices(loss_region=regions or None, neuroclip_image_encoder=args.neuroclip_image_encoder,
                           lesion_oversample=args.lesion_oversample, lesion_weight=args.lesion_weight,
                           decoder_3d=args.decoder_3d)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--plans_name", default=DEFAULT_PLANS_NAME)
    parser.add_argument("-np", "--num_processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--no_pbar", action="store_true", help="no progress bars")
    add_common_arguments(parser)


def _report_dataset_error(error: DatasetError) -> int:
    print(f"error: {error.source}: {error.headline()}; nothing was written", file=sys.stderr)
    for problem in error.problems[1:]:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_USER_ERROR


def _guarded(body):  # noqa: ANN001, ANN202 - a tiny decorator for the CLI bodies
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except DatasetError as error:
            return _report_dataset_error(error)
    return wrapper


@_guarded
def _plan_and_preprocess(args: argparse.Namespace) -> int:
    plans = api.plan_and_preprocess(
        args.dataset, args.planner, args.gpu_memory_gb, args.num_processes, args.clean, args.verify_dataset_integrity,
        not args.no_pp, args.plans_name, args.overwrite_target_spacing, args.configurations, not args.no_pbar,
        plan_choices(args),
    )
    name, _raw, pre = api.dataset_folders(args.dataset)
    print(f"{name}: plans '{plans.plans_name}' (preset {plans.preset}) in {pre}")
    for config in plans.configurations.values():
        print(f"  {config.name}: patch {list(config.patch_size)}, batch {config.batch_size}, ~{config.estimated_memory_gb} GiB")
    return 0


def plan_and_preprocess_main(argv: list[str] | None = None) -> int:
    """``unisyn_plan_and_preprocess -d 1``: verify, fingerprint, plan and preprocess."""
    parser = argparse.ArgumentParser(description="Fingerprint, plan and preprocess a raw dataset.")
    _dataset(parser)
    _fingerprint_options(parser)
    _plan_options(parser)
    parser.add_argument("--no_pp", action="store_true", help="stop after planning")
    _common(parser)
    return run_cli(_plan_and_preprocess, parser.parse_args(argv))


@_guarded
def _fingerprint(args: argparse.Namespace) -> int:
    api.fingerprint_dataset(args.dataset, args.num_processes, args.clean, args.verify_dataset_integrity, not args.no_pbar)
    return 0


def extract_fingerprint_main(argv: list[str] | None = None) -> int:
    """``unisyn_extract_fingerprint -d 1``."""
    parser = argparse.ArgumentParser(description="Verify and fingerprint a raw dataset.")
    _dataset(parser)
    _fingerprint_options(parser)
    _common(parser)
    return run_cli(_fingerprint, parser.parse_args(argv))


def _plan(args: argparse.Namespace) -> int:
    api.plan_dataset(args.dataset, args.planner, args.gpu_memory_gb, args.plans_name, args.overwrite_target_spacing,
                     args.configurations, plan_choices(args))
    return 0


def plan_experiment_main(argv: list[str] | None = None) -> int:
    """``unisyn_plan_experiment -d 1``."""
    parser = argparse.ArgumentParser(description="Plan from an existing fingerprint.")
    _dataset(parser)
    _plan_options(parser)
    _common(parser)
    return run_cli(_plan, parser.parse_args(argv))


def _preprocess(args: argparse.Namespace) -> int:
    api.preprocess(args.dataset, args.plans_name, args.num_processes, not args.no_pbar)
    return 0


def preprocess_main(argv: list[str] | None = None) -> int:
    """``unisyn_preprocess -d 1``."""
    parser = argparse.ArgumentParser(description="Preprocess a planned dataset (resumes unfinished work).")
    _dataset(parser)
    _common(parser)
    return run_cli(_preprocess, parser.parse_args(argv))


@_guarded
def _verify(args: argparse.Namespace) -> int:
    api.verify(args.dataset)
    print(f"{api.dataset_folders(args.dataset)[1]}: dataset is valid")
    return 0


def verify_main(argv: list[str] | None = None) -> int:
    """``unisyn_verify_dataset -d 1``: check a raw dataset; writes nothing."""
    parser = argparse.ArgumentParser(description="Check a raw dataset (files, geometry, metadata); writes nothing.")
    _dataset(parser)
    add_common_arguments(parser)
    return run_cli(_verify, parser.parse_args(argv))
