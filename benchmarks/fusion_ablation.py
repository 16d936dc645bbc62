"""Fusion ablation on the demo phantom's 20 directions: UniSyn's Table 2 with only the fusion swapped (issue 16).

``crossattn`` is TUMSyn's block (cross-attention gate, then LayerNorm + gated depthwise-conv feed-forward);
the paper's GFM has no such block after its prompt arithmetic, so ``gfm`` vs ``crossattn`` compares fusion
and backbone at once. Two controlled pairs swap the fusion and nothing else:
``gfm`` vs ``crossattn_plain`` (no block on either) and ``gfm_block`` vs ``crossattn`` (the block on both).
Each is trained on every direction between the demo's five modalities (T1w, T2w, FLAIR, CT, FDG-PET),
fold 0, with the trainer's final validation (the ``reference`` protocol) on the held-out subjects.

Run from the repository root (one thread; the four trainings run one after the other):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_ablation.py --out /tmp/fusion_ablation --epochs 60
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

TRAINERS = ("gfm", "crossattn_plain", "gfm_block", "crossattn")
PAIRS = (("gfm", "crossattn_plain", "no block"), ("gfm_block", "crossattn", "TUMSyn block"))
DATASET_ID = 900

logger = logging.getLogger("benchmarks.fusion_ablation")


def run(out: Path, epochs: int, cases: int) -> dict[str, Any]:
    os.environ["UNISYN_HOME"] = str(out / "home")
    for variable in ("UNISYN_RAW", "UNISYN_PREPROCESSED", "UNISYN_RESULTS"):
        os.environ.pop(variable, None)
    from unisyn_v2.demo import DEMO_MODALITIES
    from unisyn_v2.experiment_planning import api
    from unisyn_v2.io_utils import read_json
    from unisyn_v2.paths import preprocessed_dir, raw_dir
    from unisyn_v2.phantom import generate_phantom_dataset
    from unisyn_v2.training.run_training import build_trainer
    from unisyn_v2.training.settings import TrainerSettings

    name = "Dataset900_UniSynDemo"
    if not (raw_dir() / name / "dataset.json").is_file():
        generate_phantom_dataset(raw_dir() / name, num_cases=cases, seed=0, name="UniSynDemo",
                                 modalities=DEMO_MODALITIES, complete=True)
    if not (preprocessed_dir() / name / "unisynPlans.json").is_file():
        api.plan_and_preprocess(DATASET_ID, planner="cpu", num_processes=1, progress=False)
    seconds: dict[str, float] = {}
    summaries: dict[str, Any] = {}
    for trainer_name in ("neuroclip", *TRAINERS):
        stage1 = trainer_name == "neuroclip"
        settings = TrainerSettings(num_epochs=None if stage1 else epochs, continue_training=True, num_workers=0)
        trainer = build_trainer(DATASET_ID, trainer_name, "all" if stage1 else 0, device="cpu", settings=settings)
        summary_file = trainer.fold_folder / "validation" / "summary.json"
        if not (trainer.fold_folder / "checkpoint_final.pth").is_file():
            started = time.perf_counter()
            trainer.run()
            seconds[trainer_name] = round(time.perf_counter() - started, 1)
        if not stage1:
            summaries[trainer_name] = read_json(summary_file)
    return {"epochs": epochs, "seconds": seconds, "summaries": summaries}


def markdown(result: dict[str, Any]) -> str:
    summaries = result["summaries"]
    tasks = sorted(next(iter(summaries.values()))["tasks"])
    lines = ["| task | " + " | ".join(TRAINERS) + " | identity | histogram matching |", "|---|" + "---|" * (len(TRAINERS) + 2)]
    means = {t: [] for t in TRAINERS}
    for task in tasks:
        row = [summaries[t]["tasks"][task]["mean"]["psnr"] for t in TRAINERS]
        base = summaries[TRAINERS[0]]["tasks"][task]["baselines"]
        for t, v in zip(TRAINERS, row):
            means[t].append(v)
        lines.append(f"| {task} | " + " | ".join(f"{v:.2f}" for v in row) +
                     f" | {base['identity']['psnr']:.2f} | {base['histogram_matching']['psnr']:.2f} |")
    lines.append("| mean | " + " | ".join(f"{sum(v) / len(v):.2f}" for v in means.values()) + " | | |")
    lines.append("")
    for arithmetic, attention, backbone in PAIRS:
        diffs = [a - b for a, b in zip(means[arithmetic], means[attention])]
        lines.append(f"- {backbone}: {arithmetic} - {attention} = {sum(diffs) / len(diffs):+.2f} dB mean, "
                     f"arithmetic ahead on {sum(d > 0 for d in diffs)} of {len(diffs)} directions")
    lines.append(f"- training seconds: {result['seconds']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fusion_ablation",
                        help="output folder (default $TMPDIR/fusion_ablation)")
    parser.add_argument("--epochs", type=int, default=60, help="stage-2 epochs of every trainer (default 60)")
    parser.add_argument("--cases", type=int, default=20, help="phantom cases (default 20, as the demo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = run(args.out.resolve(), args.epochs, args.cases)
    text = markdown(result)
    (args.out / "fusion_ablation.md").write_text(text)
    logger.info("fusion ablation\n%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
