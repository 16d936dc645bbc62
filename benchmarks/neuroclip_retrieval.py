"""NeuroCLIP zero-shot retrieval as TUMSyn reports it: image -> text among 10 prompts, image -> modality top-1.

Reuses (or trains) the stage-1 model of the synthesis benchmark (fold 0 of the phantom benchmark, so the
validation images are held out) and scores its final weights on the held-out images and, for the
generalisation gap, on the training images. Image -> text draws the 9 distractor prompts from the whole
dataset with ``--candidate-seeds`` different seeds (mean +- sd over seeds); image -> modality compares
each image with the typical prompt of every modality (7 candidates) carrying the image's own subject.

Run from the repository root:  .venv/bin/python benchmarks/neuroclip_retrieval.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from unisyn_v2.training.neuroclip_evaluation import (  # noqa: E402
    NUM_TEXT_CANDIDATES, image_to_modality_top1, image_to_text_top1, parameter_sensitivity, text_candidates,
)
from unisyn_v2.training.run_training import build_trainer  # noqa: E402
from unisyn_v2.training.settings import TrainerSettings  # noqa: E402

logger = logging.getLogger("benchmarks.neuroclip_retrieval")


def load_stage1(config: common.BenchmarkConfig) -> Any:
    """The trained NeuroCLIP trainer with its final weights (trained first when missing)."""
    common.train(config, "neuroclip")
    trainer = build_trainer(config.dataset_id, "neuroclip", config.fold, device=config.device,
                            settings=TrainerSettings(num_epochs=config.neuroclip_epochs, num_workers=0))
    trainer.initialize()
    trainer.load_checkpoint(trainer.fold_folder / "checkpoint_final.pth", restore_training_state=False)
    trainer.clip.eval()
    return trainer


def retrieval(trainer: Any, samples: list[Any], seeds: int) -> dict[str, Any]:
    """Top-1 accuracies of one image set."""
    images = trainer.embed_images(samples)
    i2t = [image_to_text_top1(images, text_candidates([s.prompt for s in samples], trainer.all_prompts,
                                                      NUM_TEXT_CANDIDATES, seed), trainer.embed_texts)
           for seed in range(seeds)]
    i2m, per_modality = image_to_modality_top1(images, [s.modality for s in samples], [s.subject for s in samples],
                                               trainer.typical, trainer.embed_texts)
    return {"num_images": len(samples), "image_to_text_top1": {"mean": float(np.mean(i2t)), "sd": float(np.std(i2t, ddof=1)) if seeds > 1 else 0.0,
                                                               "per_seed": i2t},
            "image_to_modality_top1": i2m, "image_to_modality_per_modality": per_modality}


def markdown(result: dict[str, Any], config: common.BenchmarkConfig) -> str:
    held, train = result["held_out"], result["training"]
    modalities = sorted(held["image_to_modality_per_modality"])
    lines = [f"NeuroCLIP trained {config.neuroclip_epochs or 'plans'} epochs on fold {config.fold}'s training cases; "
             f"image -> text: {NUM_TEXT_CANDIDATES} candidates (chance {1 / NUM_TEXT_CANDIDATES:.2f}), mean ± sd over "
             f"{len(held['image_to_text_top1']['per_seed'])} draws of distractors; image -> modality: "
             f"{len(modalities)} candidates (chance {1 / len(modalities):.3f}).", "",
             "| images | n | image -> text top-1 | image -> modality top-1 |", "|---|---|---|---|"]
    for name, part in (("held-out (fold validation)", held), ("training", train)):
        t = part["image_to_text_top1"]
        lines.append(f"| {name} | {part['num_images']} | {t['mean']:.3f} ± {t['sd']:.3f} | {part['image_to_modality_top1']:.3f} |")
    lines += ["", "Image -> modality top-1 per modality (held-out):", "",
              "| " + " | ".join(modalities) + " |", "|" + "---|" * len(modalities),
              "| " + " | ".join(f"{held['image_to_modality_per_modality'][m]:.2f}" for m in modalities) + " |", ""]
    sens = result["parameter_sensitivity"]
    if sens:
        lines += [f"Text-embedding sensitivity ({sens['modality']} prompt; Spearman of the parameter with the distance "
                  f"to the first embedding): TE {sens.get('te_distance_spearman', float('nan')):.2f}, "
                  f"TR {sens.get('tr_distance_spearman', float('nan')):.2f}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--candidate-seeds", type=int, default=10, help="draws of the 9 distractor prompts")
    args = parser.parse_args(argv)
    config = common.make_config(args)
    common.setup(config, args.verbose)
    started = time.perf_counter()
    common.ensure_dataset(config)
    trainer = load_stage1(config)
    result = {"held_out": retrieval(trainer, trainer.val_samples, args.candidate_seeds),
              "training": retrieval(trainer, trainer.train_samples, args.candidate_seeds),
              "parameter_sensitivity": parameter_sensitivity(trainer.typical, trainer.embed_texts),
              "training_seconds": common.training_seconds(config, trainer.model_folder),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    text = markdown(result, config)
    common.write_results(config, "neuroclip_retrieval", result, text)
    logger.info("NeuroCLIP retrieval done\n%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
