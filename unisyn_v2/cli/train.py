"""``unisyn_train DATASET TRAINER [FOLD]``: train, resume (--c) or validate (--val) a model.

Several GPUs: ``unisyn_train 1 gfm 0 --num_gpus 4`` (starts the ranks itself), or
``torchrun --nproc_per_node 4 -m unisyn_v2.cli.train 1 gfm 0`` (and torchrun's multi-node options).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.models.registry import TRAINERS
from unisyn_v2.models.devices import DEVICES
from unisyn_v2.training.run_training import DEFAULT_PLANS_NAME, run_training, run_training_distributed
from unisyn_v2.training.settings import TrainerSettings, parse_task_filter


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="unisyn_train",
        description="Train a unisyn_v2 model. Stage 1: 'unisyn_train DATASET neuroclip'; stage 2: "
                    "'unisyn_train DATASET gfm 0'. TRAINER is a short name (" + ", ".join(TRAINERS)
                    + "), a registered class name or 'package.module:Class'.")
    parser.add_argument("dataset", help="dataset id (1, 001) or name DatasetXXX_Name")
    parser.add_argument("trainer", help="trainer short name, class name or package.module:Class")
    parser.add_argument("fold", nargs="?", default=None, help="fold 0-4 or 'all' (default: the trainer's; 0 for synthesis)")
    parser.add_argument("-c", "--configuration", default=None, help="2.5d or 3d (default: the plans' default)")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME, help=f"plans name (default {DEFAULT_PLANS_NAME})")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default auto: cuda, then mps, then cpu")
    parser.add_argument("--c", dest="continue_training", action="store_true",
                        help="continue from checkpoint_final, else latest, else best")
    parser.add_argument("--resume_from", default=None, metavar="CHECKPOINT",
                        help="with --c: resume from this checkpoint file of the fold (e.g. checkpoint_best.pth when "
                             "checkpoint_latest.pth is damaged)")
    parser.add_argument("--val", dest="validation_only", action="store_true", help="only run the final validation")
    parser.add_argument("--epochs", type=int, default=None, help="override the plans' number of epochs")
    parser.add_argument("--iterations_per_epoch", type=int, default=None, help="override the plans' iterations per epoch")
    parser.add_argument("--validation_iterations", type=int, default=None, help="validation batches per epoch")
    parser.add_argument("--batch_size", type=int, default=None, help="override the plans' batch size")
    parser.add_argument("--pretrained_weights", type=Path, default=None, help="initialise the network from a checkpoint")
    parser.add_argument("--num_workers", type=int, default=None, help="data-loading processes (0: in-process; default: cores - 1)")
    parser.add_argument("--tasks", default=None, help="task filter, e.g. 'T1w->CT' or 'T1w->CT,CT->T1w' (default: all directions)")
    parser.add_argument("--seed", type=int, default=12345, help="random seed (default 12345)")
    parser.add_argument("--save_every", type=int, default=1, help="write checkpoint_latest every N epochs (default 1)")
    parser.add_argument("--max_validation_cases", type=int, default=None, help="cap the cases of the final validation")
    parser.add_argument("--validation_figures", type=int, default=None, help="cap the example PNGs (default: one per task)")
    parser.add_argument("--no_final_validation", action="store_true", help="skip the sliding-window validation at the end")
    parser.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms (slower on CUDA)")
    parser.add_argument("--num_gpus", type=int, default=1,
                        help="data-parallel processes on this machine, one per GPU (with --device cpu: gloo processes); "
                             "the plans' batch is split across them. Multi-node: use torchrun instead")
    parser.add_argument("--text_encoder", type=Path, default=None, help="NeuroCLIP text_encoder/ folder (default: stage 1's)")
    add_common_arguments(parser)
    return parser


def _body(args: argparse.Namespace) -> int:
    settings = TrainerSettings(
        num_epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
        validation_iterations=args.validation_iterations, batch_size=args.batch_size, seed=args.seed,
        continue_training=args.continue_training, validation_only=args.validation_only,
        pretrained_weights=args.pretrained_weights, num_workers=args.num_workers, tasks=parse_task_filter(args.tasks),
        save_every=args.save_every, final_validation=not args.no_final_validation,
        max_validation_cases=args.max_validation_cases, validation_figures=args.validation_figures,
        deterministic=args.deterministic, resume_from=args.resume_from,
        extra={"text_encoder": str(args.text_encoder)} if args.text_encoder else {},
    )
    if args.num_gpus != 1:
        run_training_distributed(args.num_gpus, args.dataset, args.trainer, args.fold, args.configuration, args.plans,
                                 args.device, settings, verbose=args.verbose)
    else:
        run_training(args.dataset, args.trainer, args.fold, args.configuration, args.plans, args.device, settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unisyn_train``."""
    return run_cli(_body, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
