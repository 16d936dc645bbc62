"""``unisyn_export_model`` and ``unisyn_install_model``."""

from __future__ import annotations

import argparse

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.model_sharing import export_model, install_model
from unisyn_v2.paths import results_dir


def _model_folder(args: argparse.Namespace):  # noqa: ANN202
    from unisyn_v2.training.registry import resolve_trainer_class

    name = resolve_dataset_name(args.dataset)
    trainer = resolve_trainer_class(args.trainer).__name__
    return results_dir() / name / f"{trainer}__{args.plans}__{args.configuration}"


def export_main(argv: list[str] | None = None) -> int:
    """``unisyn_export_model -d 1 -tr gfm -o model.zip``."""
    parser = argparse.ArgumentParser(description="Pack a trained model folder into one zip file.")
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-tr", "--trainer", default="gfm")
    parser.add_argument("-c", "--configuration", default="2.5d")
    parser.add_argument("-p", "--plans", default="unisynPlans")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to include (default: all trained)")
    parser.add_argument("--chk", nargs="+", default=["checkpoint_final.pth"], help="checkpoint file names to include")
    parser.add_argument("-o", "--output", required=True)
    add_common_arguments(parser)

    def body(args: argparse.Namespace) -> int:
        path = export_model(_model_folder(args), args.output, args.folds, args.chk)
        print(f"exported to {path}")
        return 0

    return run_cli(body, parser.parse_args(argv))


def install_main(argv: list[str] | None = None) -> int:
    """``unisyn_install_model model.zip``."""
    parser = argparse.ArgumentParser(description="Install a model zip into the results folder (UNISYN_RESULTS).")
    parser.add_argument("archive")
    parser.add_argument("--overwrite", action="store_true")
    add_common_arguments(parser)

    def body(args: argparse.Namespace) -> int:
        print(f"installed {install_model(args.archive, overwrite=args.overwrite)}")
        return 0

    return run_cli(body, parser.parse_args(argv))
