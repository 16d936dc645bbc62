"""``unisyn_export_model`` and ``unisyn_install_model``."""

from __future__ import annotations

import argparse

from unisyn_v2.contracts.model_layout import FINAL_CHECKPOINT
from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.model_sharing import MAX_BYTES, export_model, install_model
from unisyn_v2.paths import results_dir


def _model_folder(args: argparse.Namespace):  # noqa: ANN202
    from unisyn_v2.models.registry import resolve_command_line_trainer

    name = resolve_dataset_name(args.dataset)
    trainer = resolve_command_line_trainer(args.trainer).__name__  # the user's own -tr: a dotted path may import
    return results_dir() / name / f"{trainer}__{args.plans}__{args.configuration}"


def export_main(argv: list[str] | None = None) -> int:
    """``unisyn_export_model -d 1 -tr gfm -o model.zip``."""
    parser = argparse.ArgumentParser(description="Pack a trained model folder into one zip file.")
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-tr", "--trainer", default="gfm")
    parser.add_argument("-c", "--configuration", default="2.5d")
    parser.add_argument("-p", "--plans", default="unisynPlans")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to include (default: all trained)")
    parser.add_argument("--chk", nargs="+", default=[FINAL_CHECKPOINT], help="checkpoint file names to include")
    parser.add_argument("-o", "--output", required=True)
    add_common_arguments(parser)

    def body(args: argparse.Namespace) -> int:
        path = export_model(_model_folder(args), args.output, args.folds, args.chk)
        print(f"exported to {path}")
        return 0

    return run_cli(body, parser.parse_args(argv))


def install_main(argv: list[str] | None = None) -> int:
    """``unisyn_install_model model.zip``."""
    parser = argparse.ArgumentParser(
        description="Install a model zip into the results folder (UNISYN_RESULTS). The zip is checked before "
                    "anything is installed: model-folder files only (no code), a manifest listing exactly them, every "
                    "JSON against its schema, a registered trainer, and size and compression-ratio limits.")
    parser.add_argument("archive")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--trust_trainer", action="append", default=[], metavar="package.module:Class",
                        help="also accept a trainer.json naming exactly this trainer class (your own, not registered); "
                             "nothing is imported at install")
    parser.add_argument("--max_size_gb", type=float, default=MAX_BYTES / 2**30,
                        help=f"refuse a model that unpacks to more than this (default {MAX_BYTES / 2**30:g} GiB)")
    add_common_arguments(parser)

    def body(args: argparse.Namespace) -> int:
        if not args.max_size_gb > 0:
            raise ValueError(f"--max_size_gb must be positive, got {args.max_size_gb}")
        folder = install_model(args.archive, overwrite=args.overwrite, trusted_trainers=tuple(args.trust_trainer),
                               max_bytes=int(args.max_size_gb * 2**30))
        print(f"installed {folder}")
        return 0

    return run_cli(body, parser.parse_args(argv))
