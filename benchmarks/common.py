"""Shared machinery of the synthesis benchmarks: the phantom benchmark dataset, cached trainings, scoring.

Every script points unisyn_v2's raw/preprocessed/results folders into ``<out>/workspace`` and calls the
same helpers, so a second script (or a rerun) reuses the dataset and every finished training instead of
repeating it. The benchmark dataset differs from ``generate_phantom_dataset`` on purpose: every case has
every benchmark modality (the papers' cohorts are paired), and the random streams of a case are keyed by
(seed, case index) here, so :func:`regenerate_anatomy` rebuilds a held-out head to simulate ground truth
for any acquisition parameters (metadata fidelity).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unisyn_v2.dataset.description import load_dataset_description
from unisyn_v2.dataset.ids import dataset_name_from_id
from unisyn_v2.dataset.image_io import Geometry, read_image
from unisyn_v2.evaluation.metrics import psnr, ssim3d
from unisyn_v2.evaluation.protocols import PAPERS_UPPER_PERCENTILE, evaluate_pair
from unisyn_v2.experiment_planning import api
from unisyn_v2.experiment_planning.splits import fold_cases
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor
from unisyn_v2.io_utils import read_json, write_json_atomic
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.paths import preprocessed_dir, raw_dir
from unisyn_v2.phantom import PhantomSpec, case_anatomy, draw_protocol, simulate_image
from unisyn_v2.phantom.tissue_maps import VolumeGeometry, write_nifti
from unisyn_v2.phantom.tissues import PhantomSubject
from unisyn_v2.preprocessing.case_preprocessor import restore_prediction
from unisyn_v2.training.run_training import build_trainer
from unisyn_v2.training.settings import Task, TrainerSettings, task_key
from unisyn_v2.training.validation import evaluate_in_mask, histogram_match, intensity_quantiles

logger = logging.getLogger("benchmarks")

BENCH_MODALITIES: tuple[str, ...] = ("T1w", "T2w", "PD", "FLAIR", "CT", "FDG-PET", "AV45-PET")
# UniSyn Table 1 (T1->CT, CT->FDG, T1->FDG, T1->FLAIR, T1->AV45) and Table 2 (CT->T1, T1->T2).
PAPER_TASKS: tuple[Task, ...] = (("T1w", "CT"), ("CT", "FDG-PET"), ("T1w", "FDG-PET"), ("T1w", "FLAIR"),
                                 ("T1w", "AV45-PET"), ("CT", "T1w"), ("T1w", "T2w"))
QUICK_TASK_SPECIFIC: tuple[Task, ...] = (("T1w", "CT"), ("T1w", "T2w"))
_SESSION, _IMAGE = 0, 100


@dataclass
class BenchmarkConfig:
    """Sizes of one benchmark run; :func:`make_config` fills quick or full defaults."""

    out: Path
    quick: bool
    dataset_id: int = 970
    name: str = "UniSynBench"
    cases: int = 20
    shape: tuple[int, int, int] = (64, 64, 64)
    voxel_size: tuple[float, float, float] = (3.2, 3.2, 3.2)
    seed: int = 0
    planner: str = "cpu"
    fold: int = 0
    neuroclip_epochs: int | None = 8
    epochs: int | None = 10
    iterations_per_epoch: int | None = 25
    task_specific: tuple[Task, ...] = QUICK_TASK_SPECIFIC
    max_test_cases: int | None = None
    device: str = "cpu"
    threads: int = 2
    num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def workspace(self) -> Path:
        return self.out / "workspace"

    @property
    def dataset_name(self) -> str:
        return dataset_name_from_id(self.dataset_id, self.name)

    def budget_text(self) -> str:
        """The training budget as the tables state it."""
        epochs = self.epochs if self.epochs is not None else "plans'"
        iters = self.iterations_per_epoch if self.iterations_per_epoch is not None else "plans'"
        return f"{epochs} epochs x {iters} iterations"


def add_common_arguments(parser: Any) -> None:
    """The options every benchmark script shares (they must agree for the model cache to be reused)."""
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "unisyn_synthesis_bench",
                        help="output folder: workspace (dataset, models) and results; shared by the benchmark scripts")
    parser.add_argument("--quick", action="store_true", help="CPU-sized run (minutes): small phantom, short training")
    parser.add_argument("--cases", type=int, help="phantom cases (quick 20, full 60)")
    parser.add_argument("--epochs", type=int, help="epochs of every stage-2 method (quick 10; full: the plans')")
    parser.add_argument("--iterations-per-epoch", type=int, help="iterations per epoch (quick 25; full: the plans')")
    parser.add_argument("--neuroclip-epochs", type=int, help="NeuroCLIP epochs (quick 8; full: the plans')")
    parser.add_argument("--device", default=None, help="cpu | cuda | auto (quick: cpu, full: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (quick: 1, which is fastest on a loaded 2-core machine; full: the CPU count, max 8)")
    parser.add_argument("--max-test-cases", type=int, help="cap the held-out cases scored")
    parser.add_argument("--shape", type=int, nargs=3, help="phantom grid (quick 64 64 64, full 96 96 96)")
    parser.add_argument("--voxel-size", type=float, help="phantom voxel size in mm, isotropic (quick 3.2, full 2.4)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def make_config(args: Any) -> BenchmarkConfig:
    """Quick or full defaults, then explicit overrides."""
    threads = args.threads or (1 if args.quick else max(1, min(8, os.cpu_count() or 1)))
    if args.quick:
        config = BenchmarkConfig(out=args.out.resolve(), quick=True, threads=threads)
    else:
        config = BenchmarkConfig(out=args.out.resolve(), quick=False, cases=60, shape=(96, 96, 96), voxel_size=(2.4, 2.4, 2.4),
                                 planner="auto", neuroclip_epochs=None, epochs=None, iterations_per_epoch=None,
                                 task_specific=PAPER_TASKS, device="auto", threads=threads, num_workers=4)
    for name in ("cases", "epochs", "iterations_per_epoch", "neuroclip_epochs", "max_test_cases", "device"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
    if getattr(args, "shape", None):
        config.shape = tuple(int(n) for n in args.shape)
    if getattr(args, "voxel_size", None):
        config.voxel_size = (float(args.voxel_size),) * 3
    return config


def setup(config: BenchmarkConfig, verbose: bool = False) -> None:
    """Logging, torch threads and unisyn folders inside the workspace."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(config.threads)  # the sliding window and training run in this process
    for variable, sub in (("UNISYN_RAW", "raw"), ("UNISYN_PREPROCESSED", "preprocessed"), ("UNISYN_RESULTS", "results")):
        os.environ[variable] = str(config.workspace / sub)
    config.out.mkdir(parents=True, exist_ok=True)


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


# ------------------------------------------------------------------ dataset
def case_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), int(stream)])


def regenerate_anatomy(config: BenchmarkConfig, index: int) -> tuple[dict[str, np.ndarray], PhantomSubject, np.ndarray]:
    """Tissue maps, subject and brain mask of benchmark case ``index`` (0-based), exactly as written.

    The benchmark phantom shares the generator's subject and anatomy streams, so the package's
    :func:`unisyn_v2.phantom.case_anatomy` rebuilds its heads (only its sessions and image streams differ).
    """
    anatomy = case_anatomy(PhantomSpec(config.seed, config.shape, config.voxel_size), index)
    return anatomy.tissues, anatomy.subject, anatomy.mask


def case_index(case_id: str) -> int:
    """``sub-007`` -> 6."""
    return int(case_id.split("-")[-1]) - 1


def _write_case(config: BenchmarkConfig, root: Path, index: int) -> dict[str, Any]:
    case_id = f"sub-{index + 1:03d}"
    tissues, subject, mask = regenerate_anatomy(config, index)
    geometry = VolumeGeometry.centred(config.shape, config.voxel_size)
    session = case_rng(config.seed, index, _SESSION)
    mr_scanner = {"field_strength": float(session.choice([1.5, 3.0], p=[0.4, 0.6])),
                  "manufacturer": str(session.choice(["Siemens", "GE", "Philips"]))}
    write_nifti(mask, geometry, root / case_id / f"{case_id}_brainmask.nii.gz")
    images = []
    for number, name in enumerate(BENCH_MODALITIES):
        rng = case_rng(config.seed, index, _IMAGE + number)
        family = get_modality(name).family
        metadata = draw_protocol(name, rng, voxel_size=geometry.spacing, **(mr_scanner if family is ModalityFamily.MRI else {}))
        image = simulate_image(name, tissues, metadata, subject, rng)
        image[mask == 0] = -1024.0 if family is ModalityFamily.CT else 0.0  # skull-stripped, as the papers
        relative = f"{case_id}/{case_id}_{name}.nii.gz"
        write_nifti(image.astype(np.float32), geometry, root / relative)
        images.append({"file": relative, "modality": name, "metadata": metadata.to_dict()})
    return {"id": case_id, "subject": subject.metadata().to_dict(), "brain_mask": f"{case_id}/{case_id}_brainmask.nii.gz",
            "images": images}


def ensure_dataset(config: BenchmarkConfig) -> Path:
    """Write (once) the paired, skull-stripped phantom and plan/preprocess it; returns the raw folder."""
    root = raw_dir() / config.dataset_name
    if (root / "dataset.json").is_file() and len(read_json(root / "dataset.json")["cases"]) != config.cases:
        raise RuntimeError(f"{root} holds another number of cases than --cases {config.cases}; use another --out")
    if not (root / "dataset.json").is_file():
        started = time.perf_counter()
        cases = [_write_case(config, root, i) for i in range(config.cases)]
        write_json_atomic(root / "dataset.json", {
            "name": config.name, "reference": "unisyn_v2.phantom", "licence": "CC0-1.0",
            "description": f"benchmark phantom: seed {config.seed}, shape {list(config.shape)}, voxel {list(config.voxel_size)} mm, "
                           f"every case has {', '.join(BENCH_MODALITIES)}; skull-stripped", "cases": cases})
        logger.info("wrote the benchmark phantom (%d cases) in %.0f s", config.cases, time.perf_counter() - started)
    plans_file = preprocessed_dir() / config.dataset_name / "unisynPlans.json"
    data_ready = plans_file.is_file() and any((preprocessed_dir() / config.dataset_name).glob("*/*_mask.npy"))
    if not data_ready:
        started = time.perf_counter()
        api.plan_and_preprocess(config.dataset_id, planner=config.planner, num_processes=1, progress=False)
        logger.info("planned and preprocessed in %.0f s", time.perf_counter() - started)
    return root


def split(config: BenchmarkConfig) -> tuple[list[str], list[str]]:
    """(training, held-out test) case ids: the fold's train and validation lists."""
    splits = read_json(preprocessed_dir() / config.dataset_name / "splits_final.json")
    train, test = fold_cases(splits, config.fold, [])
    return train, test[: config.max_test_cases or None]


# ------------------------------------------------------------------ training
def train(config: BenchmarkConfig, trainer: str, tasks: tuple[Task, ...] | None = None) -> tuple[Path, float]:
    """Train (or reuse) one model; returns (model folder, seconds spent now; 0 when cached)."""
    stage1 = trainer == "neuroclip"
    settings = TrainerSettings(
        num_epochs=config.neuroclip_epochs if stage1 else config.epochs,
        iterations_per_epoch=None if stage1 else config.iterations_per_epoch,
        tasks=tasks, continue_training=True, final_validation=stage1, num_workers=config.num_workers)
    instance = build_trainer(config.dataset_id, trainer, config.fold, device=config.device, settings=settings)
    label = trainer + (f" {','.join(task_key(*t) for t in tasks)}" if tasks else "")
    return run_or_reuse(config, instance, settings, label)


def run_or_reuse(config: BenchmarkConfig, instance: Any, settings: TrainerSettings, label: str) -> tuple[Path, float]:
    """Run a built trainer, or reuse its finished fold when it was trained with the same budget (an error when
    another budget trained it); records the seconds. Returns (model folder, seconds spent now; 0 when reused)."""
    budget = {"num_epochs": settings.num_epochs, "iterations_per_epoch": settings.iterations_per_epoch}
    budget_file = instance.fold_folder / "benchmark_budget.json"
    if (instance.fold_folder / "checkpoint_final.pth").is_file():
        if budget_file.is_file() and read_json(budget_file) != budget:
            raise RuntimeError(f"{instance.fold_folder} was trained with {read_json(budget_file)}, not {budget}; "
                               "use another --out for another budget")
        logger.info("reusing %s (%s)", label, instance.fold_folder)
        return instance.model_folder, 0.0
    logger.info("training %s -> %s", label, instance.fold_folder)
    started = time.perf_counter()
    instance.run()
    seconds = time.perf_counter() - started
    write_json_atomic(budget_file, budget)
    timings = config.workspace / "training_seconds.json"
    record = read_json(timings) if timings.is_file() else {}
    record[str(instance.fold_folder.relative_to(config.workspace))] = round(seconds, 1)
    write_json_atomic(timings, record)
    return instance.model_folder, seconds


def training_seconds(config: BenchmarkConfig, model_folder: Path) -> float | None:
    """Seconds the (possibly cached) training took when it ran."""
    timings = config.workspace / "training_seconds.json"
    if not timings.is_file():
        return None
    return read_json(timings).get(str((model_folder / f"fold_{config.fold}").relative_to(config.workspace)))


def load_predictor(config: BenchmarkConfig, model_folder: Path) -> UniSynPredictor:
    return UniSynPredictor.from_model_folder(model_folder, folds=[config.fold], device=config.device,
                                             settings=PredictionSettings(progress=False, tile_batch_size=8))


# ------------------------------------------------------------------ cases and scoring
@dataclass
class TestCase:
    """One held-out case in raw space: images by modality, their descriptions, geometry and brain mask."""

    case_id: str
    images: dict[str, np.ndarray]
    descriptions: dict[str, ImageDescription]
    geometry: Geometry
    mask: np.ndarray


def load_test_cases(config: BenchmarkConfig, case_ids: list[str]) -> list[TestCase]:
    description = load_dataset_description(raw_dir() / config.dataset_name)
    out = []
    for case_id in case_ids:
        case = description.case(case_id)
        images, descriptions, geometry = {}, {}, None
        for image in case.images:
            images[image.modality], geometry = read_image(description.path_of(image.file))
            descriptions[image.modality] = case.describe(image)
        mask = read_image(description.path_of(case.brain_mask))[0] > 0
        out.append(TestCase(case_id, images, descriptions, geometry, mask))
    return out


def predict_raw(predictor: UniSynPredictor, source_image: np.ndarray, geometry: Geometry, source: ImageDescription,
                target: ImageDescription, mask: np.ndarray) -> np.ndarray:
    """Synthesis in the source's grid and the target's units (HU, SUV/SUVR, normalised MRI x 1000)."""
    normalised, properties = predictor.predict_image(source_image, geometry, source, target, mask)
    return restore_prediction(normalised, properties, predictor.plans, target.modality)[0]


def brain_scale(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The papers' scaling (minimum -> 0, 99.5th percentile -> 1, clipped) with both taken inside the brain.

    On skull-stripped images the papers' whole-image minimum is the background: for CT that is -1024 HU,
    which squeezes all brain tissue (0-80 HU) into the top 8% of [0, 1], where any HU-like guess (even
    the T1w itself) scores > 35 dB. Taking the statistics in the brain keeps the tissue contrast.
    """
    values = image[mask].astype(np.float64)
    lo, hi = float(values.min()), float(np.percentile(values, PAPERS_UPPER_PERCENTILE))
    scaled = np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.where(mask, scaled, 0.0)


def score(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray, modality: str) -> dict[str, float]:
    """PSNR/SSIM on brain-scaled images in the brain; the library's papers protocol (``*_image``); MAE in HU for CT."""
    mask = np.asarray(mask) > 0
    ref, pred = brain_scale(reference, mask), brain_scale(prediction, mask)
    values = evaluate_in_mask(reference, prediction, mask)  # whole-image scaling, reference copied outside the brain
    result = {"psnr": psnr(ref, pred, data_range=1.0, mask=mask), "ssim": ssim3d(ref, pred, data_range=1.0, mask=mask),
              "psnr_image": values["papers_psnr"], "ssim_image": values["papers_ssim"]}
    if get_modality(modality).family is ModalityFamily.CT:
        result["mae_hu"] = float(evaluate_pair(reference, prediction, "synthrad", mask)["mae"])
    return result


def reference_quantiles(config: BenchmarkConfig, train_ids: list[str], modalities: list[str], limit: int = 10) -> dict[str, np.ndarray]:
    """Mean raw brain quantiles of each modality over training cases (the histogram-matching target)."""
    description = load_dataset_description(raw_dir() / config.dataset_name)
    collected: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    for case_id in train_ids[:limit]:
        case = description.case(case_id)
        mask = read_image(description.path_of(case.brain_mask))[0] > 0
        for image in case.images:
            if image.modality in collected:
                collected[image.modality].append(intensity_quantiles(read_image(description.path_of(image.file))[0], mask))
    return {m: np.mean(q, axis=0) for m, q in collected.items() if q}


def baselines(source: np.ndarray, mask: np.ndarray, target_quantiles: np.ndarray) -> dict[str, np.ndarray]:
    """Identity (the source itself) and histogram matching (source brain quantiles -> training target's)."""
    return {"identity": source, "histogram matching": histogram_match(source, mask, target_quantiles)}


def summarise(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and sd (ddof 1 when n > 1) of each metric over cases."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in sorted({k for r in rows for k in r}):
        values = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def cell(summary: dict[str, Any] | None, key: str, digits: int) -> str:
    """``mean +- sd`` for a markdown table; an en dash when missing."""
    if not summary or key not in summary:
        return "–"
    return f"{summary[key]['mean']:.{digits}f} ± {summary[key]['sd']:.{digits}f}"


def write_results(config: BenchmarkConfig, stem: str, payload: dict[str, Any], markdown: str) -> None:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md``."""
    payload = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
               "machine": machine_description(), **payload}
    write_json_atomic(config.out / f"{stem}.json", payload)
    (config.out / f"{stem}.md").write_text(markdown)
    logger.info("wrote %s and %s", config.out / f"{stem}.json", config.out / f"{stem}.md")
