"""Prompt sweep: does the prompt's acquisition metadata control the synthesised contrast? (issue 16)

Trains on a paired phantom whose MR protocols are drawn over the ``wide`` ranges (T1w, T2w, FLAIR;
T1w is MPRAGE or spoiled gradient echo), then, on held-out subjects, asks each model for the same
target at a series of values of one parameter and compares with the phantom's own physics rendered
at exactly those values without noise or bias (``unisyn_v2.phantom.render_subject``). Four sweeps:

- T2w TE (source T1w), on the subject's own T2w protocol;
- FLAIR TI as a fraction of the CSF null (source T1w), on the subject's own FLAIR protocol;
- MPRAGE TI (source T2w), on the training set's typical MPRAGE TR/TE/flip angle;
- spoiled-GRE flip angle (source T2w), on the training set's typical GRE TR/TE.

Each sweep has three kinds of values, taken from the training set's own draws of that parameter:
*in-range* (training values at the 15th, 50th and 85th percentiles), *intermediate* (the midpoints
of the two widest gaps between training values) and *out-of-range* (below the smallest and above
the largest training value). Reported per sweep and method: PSNR/SSIM per condition; GM, WM and CSF
mean intensity, predicted against true (both in the MRI contract's scale, brain 0.5/99.5 percentiles
-> 0/1); and the contrast that the parameter moves most, m_a - m_b on that scale, as the slope and
Pearson r of predicted against true over the sweep. Methods: GFM, CrossAttn, one-hot (which cannot
read parameters), the physics-informed GFM (``gfm_qmri``: effective PD/T1/T2 maps rendered with the
prompt's sequence parameters; its q-map error per tissue against the phantom's true T1/T2 is reported
as a bonus), the controlled fusion ablation (``gfm_block`` vs ``crossattn``, ``gfm`` vs
``crossattn_plain``: only the fusion differs within a pair), and the parameter-blind ceiling: the
truth rendered at the training set's typical protocol, the best any method that ignores the
parameters can do.

Run from the repository root (about 40 minutes on 2 CPU cores with --quick):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompt_sweep.py --quick --out /tmp/prompt_sweep
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from unisyn_v2.dataset.image_io import read_image  # noqa: E402
from unisyn_v2.metadata.fields import ImageMetadata  # noqa: E402
from unisyn_v2.metadata.modalities import ModalityFamily  # noqa: E402
from unisyn_v2.metadata.prompts import ImageDescription  # noqa: E402
from unisyn_v2.metadata.typical import typical_protocol  # noqa: E402
from unisyn_v2.experiment_planning import api  # noqa: E402
from unisyn_v2.contracts.plans import Plans  # noqa: E402
from unisyn_v2.io_utils import finite_or_none, read_json  # noqa: E402
from unisyn_v2.paths import preprocessed_dir, raw_dir  # noqa: E402
from unisyn_v2.phantom import PhantomCase, generate_phantom_dataset, read_phantom_spec  # noqa: E402
from unisyn_v2.phantom.protocols import flair_null_ti  # noqa: E402
from unisyn_v2.phantom.render import prompt_patch  # noqa: E402

logger = logging.getLogger("benchmarks.prompt_sweep")

SWEEP_MODALITIES: tuple[str, ...] = ("T1w", "T2w", "FLAIR")
# trained both ways (T2w/FLAIR -> T1w too), plus pairs of two protocols of one modality on one subject, which
# isolate what a parameter changes (the phantom images every MR modality several times per subject)
TASKS: tuple[tuple[str, str], ...] = (("T1w", "T2w"), ("T1w", "FLAIR"), ("T1w", "T1w"), ("T2w", "T2w"), ("FLAIR", "FLAIR"))
METHODS: tuple[tuple[str, str], ...] = (("GFM", "gfm"), ("CrossAttn", "crossattn"), ("One-hot", "onehot"),
                                        ("GFM + block", "gfm_block"), ("CrossAttn plain", "crossattn_plain"),
                                        ("GFM qMRI", "gfm_qmri"))
CEILING = "Parameter-blind ceiling"
FIGURE_COLUMNS = ("GFM", "CrossAttn", "One-hot", "GFM qMRI")
QMRI = "GFM qMRI"
TISSUE_CLASSES = ("gm", "wm", "csf")
MAX_PSNR = 100.0  # dB; the ceiling is exact (infinite PSNR) where a condition is the typical protocol


@dataclass(frozen=True)
class Sweep:
    """One parameter sweep: which image, from which source, which parameter, which contrast to follow."""

    name: str
    target: str
    source: str
    parameter: str  # an ImageMetadata field, or "csf_null_fraction" for FLAIR TI
    contrast: tuple[str, str]  # tissues (a, b) of the contrast m_a - m_b
    log_scale: bool
    sequence: str  # "mprage" / "gre" select the T1w sequence; "own" uses the subject's own protocol
    below: float  # out-of-range values: smallest training value / below, largest * above
    above: float
    physical_max: float = math.inf


SWEEPS: tuple[Sweep, ...] = (
    Sweep("T2w TE", "T2w", "T1w", "echo_time", ("csf", "gm"), True, "own", 1.6, 1.4),
    Sweep("FLAIR TI", "FLAIR", "T1w", "csf_null_fraction", ("csf", "wm"), False, "own", 1.35, 1.2),
    Sweep("MPRAGE TI", "T1w", "T2w", "inversion_time", ("wm", "gm"), True, "mprage", 1.6, 1.3),
    Sweep("GRE flip angle", "T1w", "T2w", "flip_angle", ("wm", "gm"), True, "gre", 2.0, 1.5, physical_max=90.0),
)


# ------------------------------------------------------------------ protocols of the training set
def t1w_sequence(metadata: dict[str, Any]) -> str:
    """``mprage`` (inversion-prepared) or ``gre`` (spoiled gradient echo) for a T1w protocol."""
    return "mprage" if metadata.get("inversion_time") is not None else "gre"


def parameter_value(sweep: Sweep, metadata: dict[str, Any]) -> float | None:
    """The swept parameter of one training protocol (FLAIR: TI over the CSF-null TI at its TR and field)."""
    if sweep.parameter == "csf_null_fraction":
        return float(metadata["inversion_time"]) / flair_null_ti(float(metadata["repetition_time"]),
                                                                  float(metadata["field_strength"]))
    value = metadata.get(sweep.parameter)
    return None if value is None else float(value)


def training_protocols(dataset: dict[str, Any], train_ids: list[str], sweep: Sweep) -> list[dict[str, Any]]:
    """The training set's protocols of the sweep's target (and T1w sequence), from dataset.json."""
    chosen = set(train_ids)
    protocols = []
    for case in dataset["cases"]:
        for image in case["images"] if case["id"] in chosen else []:
            if image["modality"] != sweep.target:
                continue
            if sweep.sequence in ("mprage", "gre") and t1w_sequence(image["metadata"]) != sweep.sequence:
                continue
            protocols.append(image["metadata"])
    if len(protocols) < 3:
        raise RuntimeError(f"{sweep.name}: only {len(protocols)} training protocols; use more --cases")
    return protocols


def ensure_dataset(config: common.BenchmarkConfig) -> Path:
    """Write (once) the paired, skull-stripped wide-protocol phantom and plan/preprocess it."""
    root = raw_dir() / config.dataset_name
    if not (root / "dataset.json").is_file():
        started = time.perf_counter()
        generate_phantom_dataset(root, config.cases, config.seed, shape=config.shape, voxel_size_mm=config.voxel_size,
                                 modalities=SWEEP_MODALITIES, skull_strip=True, complete=True, name=config.name,
                                 protocol_ranges="wide", protocols_per_modality=config.extra["protocols_per_modality"])
        logger.info("wrote the wide-protocol phantom (%d cases) in %.0f s", config.cases, time.perf_counter() - started)
    elif len(read_json(root / "dataset.json")["cases"]) != config.cases:
        raise RuntimeError(f"{root} holds another number of cases than --cases {config.cases}; use another --out")
    plans_file = preprocessed_dir() / config.dataset_name / "unisynPlans.json"
    qmri = config.extra.get("qmri_kwargs", {})  # the qMRI head's plan choices (gain, head widths, compartments), when given
    if not plans_file.is_file():
        api.plan_and_preprocess(config.dataset_id, planner=config.planner, num_processes=1, progress=False)
        hidden = config.extra["affine_hidden"]
        extra = {**({"affine_hidden": hidden} if hidden else {}), **qmri}
        if extra:  # the GFM's prompt -> (alpha, beta) map as an MLP (the plans' default is the paper's linear map)
            plans = Plans.load(plans_file)
            configurations = {name: replace(c, network_kwargs={**c.network_kwargs, **extra})
                              for name, c in plans.configurations.items()}
            replace(plans, configurations=configurations).save(plans_file)
    else:
        for name, c in Plans.load(plans_file).configurations.items():
            for key, value in qmri.items():
                if c.network_kwargs.get(key) != value:
                    raise RuntimeError(f"{plans_file}: configurations.{name}.network_kwargs.{key} is "
                                       f"{c.network_kwargs.get(key)!r}, not {value!r}; use another --out for another qMRI head")
    return root


def sweep_values(sweep: Sweep, train_values: list[float]) -> list[tuple[str, float]]:
    """(kind, value): three in-range training values, two gap midpoints, two values outside the range."""
    values = np.sort(np.asarray(train_values, dtype=np.float64))
    warp: Callable[[np.ndarray], np.ndarray] = np.log if sweep.log_scale else (lambda v: v)
    unwarp: Callable[[np.ndarray], np.ndarray] = np.exp if sweep.log_scale else (lambda v: v)
    out: list[tuple[str, float]] = []
    for q in (15, 50, 85):
        target = np.percentile(values, q)
        out.append(("in-range", float(values[np.argmin(np.abs(values - target))])))
    w = warp(values)
    gaps = np.argsort(np.diff(w))[::-1][:2]
    out += [("intermediate", float(unwarp((w[i] + w[i + 1]) / 2))) for i in sorted(gaps)]
    out += [("out-of-range", float(values[0] / sweep.below)),
            ("out-of-range", float(min(values[-1] * sweep.above, sweep.physical_max)))]
    return sorted(out, key=lambda kv: kv[1])


def condition_metadata(sweep: Sweep, base: ImageMetadata, value: float) -> ImageMetadata:
    """The base protocol with the swept parameter set to ``value``."""
    if sweep.parameter == "csf_null_fraction":
        null = flair_null_ti(float(base.repetition_time), float(base.field_strength))
        return replace(base, inversion_time=float(round(null * value)))
    digits = 0 if sweep.parameter in ("inversion_time", "flip_angle") else 1
    return replace(base, **{sweep.parameter: float(round(value, digits))})


def base_protocol(sweep: Sweep, own: dict[str, ImageDescription], typical: dict[str, Any]) -> ImageMetadata:
    """The subject's own protocol of the target, or the training set's typical one of the T1w sequence on its scanner."""
    if sweep.sequence == "own":
        return own[sweep.target].metadata
    scanner = own[sweep.source].metadata
    fields = {k: v for k, v in typical.items() if k not in ("voxel_size", "field_strength", "manufacturer", "scanner_model")}
    return replace(ImageMetadata.from_dict(fields), field_strength=scanner.field_strength,
                   manufacturer=scanner.manufacturer, voxel_size=own[sweep.target].metadata.voxel_size)


# ------------------------------------------------------------------ images and measures
def render_truth(phantom: PhantomCase, modality: str, metadata: ImageMetadata) -> np.ndarray:
    """The physics image for exactly these parameters, without noise or receive bias, skull-stripped."""
    image = phantom.render(modality, prompt_patch(metadata, ModalityFamily.MRI), noise=False)
    return np.where(phantom.anatomy.mask > 0, image, 0.0).astype(np.float32)


def contract_scale(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The MRI normalisation of the plans: brain 0.5th percentile -> 0, 99.5th -> 1 (not clipped)."""
    values = image[mask].astype(np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return (image.astype(np.float64) - lo) / max(hi - lo, 1e-12)


def tissue_means(image: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of ``image`` in the nearly pure voxels of each tissue class."""
    return {t: float(image[m].mean()) for t, m in masks.items()}


def contrast(means: dict[str, float], pair: tuple[str, str]) -> float:
    """m_a - m_b on the contract's scale (a fraction of the brain's 0.5-99.5 percentile range).

    A ratio such as (m_a - m_b) / (m_a + m_b) saturates here, since the darkest tissue sits near the
    0.5th percentile, i.e. near 0."""
    return float(means[pair[0]] - means[pair[1]])


def fit(true: list[float], predicted: list[float]) -> dict[str, float]:
    """Least-squares slope of predicted on true contrast, and Pearson r (NaN when the truth does not vary)."""
    x, y = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) < 1e-9:
        return {"slope": float("nan"), "r": float("nan"), "n": int(len(x))}
    slope = float(np.polyfit(x, y, 1)[0])
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 1e-12 else 0.0
    return {"slope": slope, "r": r, "n": int(len(x))}


# ------------------------------------------------------------------ the run
def run(config: common.BenchmarkConfig, methods: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    common.train(config, "neuroclip")
    folders = {label: common.train(config, trainer, TASKS)[0] for label, trainer in methods}
    predictors = {label: common.load_predictor(config, folder) for label, folder in folders.items()}
    train_ids, test_ids = common.split(config)
    cases = common.load_test_cases(config, test_ids)
    root = raw_dir() / config.dataset_name
    dataset, spec = read_json(root / "dataset.json"), read_phantom_spec(root)
    phantoms = {case.case_id: PhantomCase(spec, case.case_id) for case in cases}
    records: list[dict[str, Any]] = []
    figure_rows: dict[str, list[dict[str, np.ndarray]]] = {}
    plan: dict[str, Any] = {}
    for sweep in SWEEPS:
        protocols = training_protocols(dataset, train_ids, sweep)
        values = sweep_values(sweep, [v for p in protocols if (v := parameter_value(sweep, p)) is not None])
        typical = typical_protocol(protocols)
        plan[sweep.name] = {"values": values, "typical_protocol": typical,
                            "training_range": [min(parameter_value(sweep, p) for p in protocols),
                                               max(parameter_value(sweep, p) for p in protocols)]}
        for case_number, case in enumerate(cases):
            phantom = phantoms[case.case_id]
            if not np.array_equal(phantom.anatomy.mask > 0, case.mask):
                raise RuntimeError(f"{case.case_id}: the rebuilt anatomy does not match the written brain mask")
            masks = {t: (phantom.anatomy.tissues[t] > 0.9) & case.mask for t in TISSUE_CLASSES}
            base = base_protocol(sweep, case.descriptions, typical)
            ceiling_metadata = replace(ImageMetadata.from_dict({k: v for k, v in typical.items() if k != "voxel_size"}),
                                       voxel_size=base.voxel_size)
            ceiling = render_truth(phantom, sweep.target, ceiling_metadata)
            source = case.descriptions[sweep.source]
            if case_number == 0:
                targets = [ImageDescription(sweep.target, condition_metadata(sweep, base, v), source.subject) for _, v in values]
                plan[sweep.name]["prompt_response"] = {label: prompt_response(p, targets) for label, p in predictors.items()}
            for kind, value in values:
                metadata = condition_metadata(sweep, base, value)
                truth = render_truth(phantom, sweep.target, metadata)
                target = ImageDescription(sweep.target, metadata, source.subject)
                images = {"truth": truth, CEILING: ceiling}
                for label, predictor in predictors.items():
                    images[label] = common.predict_raw(predictor, case.images[sweep.source], case.geometry, source,
                                                       target, case.mask)
                true_means = tissue_means(contract_scale(truth, case.mask), masks)
                for label, image in images.items():
                    if label == "truth":
                        continue
                    means = tissue_means(contract_scale(image, case.mask), masks)
                    scores = common.score(truth, image, case.mask, sweep.target)
                    scores = {k: min(v, MAX_PSNR) if k.startswith("psnr") else v for k, v in scores.items()}
                    records.append({"sweep": sweep.name, "case": case.case_id, "kind": kind, "value": value,
                                    "method": label, **scores,
                                    "means": means, "true_means": true_means,
                                    "contrast": contrast(means, sweep.contrast),
                                    "true_contrast": contrast(true_means, sweep.contrast)})
                if case_number == 0:
                    figure_rows.setdefault(sweep.name, []).append(
                        {"value": value, **{k: contract_scale(v, case.mask) * case.mask for k, v in images.items()}})
                logger.info("%s %s %s %.3g: %s", sweep.name, case.case_id, kind, value,
                            ", ".join(f"{r['method']} {r['psnr']:.1f}" for r in records[-len(images) + 1:]))
    qmaps = qmap_errors(predictors[QMRI], cases, phantoms) if QMRI in predictors else None
    return {"train_cases": train_ids, "test_cases": test_ids, "plan": plan, "records": records, "qmap_errors": qmaps,
            "summary": summarise(records, [label for label, _ in methods] + [CEILING]),
            "_figure": figure_rows}


def qmap_errors(predictor: Any, cases: list[Any], phantoms: dict[str, PhantomCase]) -> dict[str, Any]:
    """Predicted effective T1/T2 (ms) per tissue against the phantom's true values (a bonus: never trained on).

    For each held-out subject and source (T1w, T2w), the qMRI model's maps at the source's field strength,
    averaged over the nearly pure voxels (> 90 %) of GM, WM and CSF in the brain, against the subject's own
    relaxation times (``phantom.tissues.mri_parameters``)."""
    from unisyn_v2.inference.qmaps import predict_qmaps, restore_map
    from unisyn_v2.phantom import tissues as tissue_table
    from unisyn_v2.preprocessing.case_preprocessor import preprocess_case

    order = list(getattr(tissue_table, "ALL_TISSUES", tissue_table.TISSUES))
    rows: list[dict[str, Any]] = []
    for case in cases:
        phantom = phantoms[case.case_id]
        for modality in ("T1w", "T2w"):
            source = case.descriptions[modality]
            field = float(source.metadata.field_strength or 3.0)
            target = ImageDescription("T2w", ImageMetadata(field_strength=field, repetition_time=4000.0, echo_time=100.0),
                                      source.subject)
            arrays = preprocess_case([case.images[modality]], [source], case.geometry, predictor.plans, case.mask, case.case_id)
            maps = np.mean([predict_qmaps(net, predictor.conditioner, arrays.data, source, target,
                                          tuple(predictor.configuration.patch_size), predictor.configuration.is_slab,
                                          predictor.device) for net in predictor.networks], axis=0)
            restored = {name: restore_map(maps[i], arrays.properties) for i, name in enumerate(("pd", "t1", "t2", "t2s"))}
            truth = tissue_table.mri_parameters(phantom.anatomy.subject, field)
            for tissue in TISSUE_CLASSES:
                pure = (phantom.anatomy.tissues[tissue] > 0.9) & case.mask
                for quantity in ("t1", "t2"):
                    predicted, true = float(restored[quantity][pure].mean()), float(truth[quantity][order.index(tissue)])
                    rows.append({"case": case.case_id, "source": modality, "tissue": tissue, "quantity": quantity,
                                 "predicted": predicted, "true": true})
    summary = {}
    for tissue in TISSUE_CLASSES:
        for quantity in ("t1", "t2"):
            chosen = [r for r in rows if r["tissue"] == tissue and r["quantity"] == quantity]
            summary[f"{tissue} {quantity}"] = {
                "predicted": float(np.mean([r["predicted"] for r in chosen])), "true": float(np.mean([r["true"] for r in chosen])),
                "mae": float(np.mean([abs(r["predicted"] - r["true"]) for r in chosen])),
                "relative": float(np.mean([abs(r["predicted"] - r["true"]) / r["true"] for r in chosen]))}
    return {"rows": rows, "summary": summary}


def real_template_scores(predictors: dict[str, Any], real_dir: Path) -> dict[str, Any]:
    """The sweep's models on the real ICBM152 templates: T1w -> T2w (TE 120 ms) and -> PD-weighted (TE 35 ms).

    One model per method predicts both from the skull-stripped average T1w (spoiled FLASH TR 18 / TE 10 ms,
    30 degrees, 1.5 T). This phantom has no PD modality, so the PD-weighted template (same dual-echo spin
    echo, TR 3300 ms) is asked for as a T2w spin echo at TE 35 ms: the same physics, and inside the T2w TE
    range the models trained on. Scored like the sweep (papers' scaling in the brain mask)."""
    import real_templates

    mask = read_image(real_dir / "brainmask_bin.nii.gz")[0] > 0.5
    t1, geometry = read_image(real_dir / "T1w_icbm152avg.nii.gz")
    t1 = np.where(mask, t1, 0.0).astype(np.float32)
    source = real_templates.SOURCE
    scanner = real_templates.MR_SCANNER
    targets = {"T2w (TE 120 ms)": ("T2w_icbm152avg.nii.gz", 120.0), "PD (TE 35 ms)": ("PDw_icbm152avg.nii.gz", 35.0)}
    out: dict[str, Any] = {}
    for name, (file, echo_time) in targets.items():
        reference = read_image(real_dir / file)[0]
        metadata = ImageMetadata(repetition_time=3300.0, echo_time=echo_time, flip_angle=90.0, **scanner)
        target = ImageDescription("T2w", metadata, real_templates.SUBJECT)
        scores = {label: common.score(reference, common.predict_raw(p, t1, geometry, source, target, mask), mask, "T2w")
                  for label, p in predictors.items()}
        scores["identity"] = common.score(reference, t1, mask, "T2w")
        out[name] = {"scores": scores}
        logger.info("real template %s: %s", name, ", ".join(f"{k} {v['psnr']:.2f}" for k, v in scores.items()))
    return out


def prompt_response(predictor: Any, targets: list[ImageDescription]) -> dict[str, float] | None:
    """How much alpha and beta move across a sweep's target prompts, against their spread over channels.

    The GFM's only way to follow a parameter is through (alpha_t, beta_t); a ratio near 0 means the
    prompt arithmetic ignores it. None for networks without prompt arithmetic.
    """
    import torch

    network = predictor.networks[0]
    network = getattr(network, "network", network)
    affine = getattr(network, "affine", None)
    if affine is None or predictor.conditioner is None:
        return None
    with torch.no_grad():
        alpha, beta = affine(predictor.conditioner.embed(targets))
    return {"alpha": float(alpha.std(0).mean() / alpha.std(1).mean().clamp_min(1e-12)),
            "beta": float(beta.std(0).mean() / beta.std(1).mean().clamp_min(1e-12))}


def summarise(records: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per sweep and method: PSNR/SSIM per kind of value, contrast fits, tissue means per value."""
    out: dict[str, Any] = {}
    for sweep in SWEEPS:
        per_method: dict[str, Any] = {}
        for method in methods:
            rows = [r for r in records if r["sweep"] == sweep.name and r["method"] == method]
            if not rows:
                continue
            entry: dict[str, Any] = {}
            for kind in ("in-range", "intermediate", "out-of-range"):
                chosen = [r for r in rows if r["kind"] == kind]
                entry[kind] = {"psnr": float(np.mean([r["psnr"] for r in chosen])),
                               "ssim": float(np.mean([r["ssim"] for r in chosen]))}
            in_range = [r for r in rows if r["kind"] == "in-range"]
            entry["fit_in_range"] = fit([r["true_contrast"] for r in in_range], [r["contrast"] for r in in_range])
            entry["fit_all"] = fit([r["true_contrast"] for r in rows], [r["contrast"] for r in rows])
            entry["tissue_means"] = {
                f"{value:.4g}": {t: [float(np.mean([r["means"][t] for r in rows if r["value"] == value])),
                                     float(np.mean([r["true_means"][t] for r in rows if r["value"] == value]))]
                                 for t in TISSUE_CLASSES}
                for value in sorted({r["value"] for r in rows})}
            per_method[method] = entry
        out[sweep.name] = per_method
    return out


def headline(summary: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """The issue's targets, per method: slope/r in range, sign on every sweep, PSNR over one-hot, out-of-range drop."""
    out: dict[str, Any] = {}
    for method in methods:
        sweeps = [summary[s.name][method] for s in SWEEPS if method in summary[s.name]]
        onehot = [summary[s.name]["One-hot"] for s in SWEEPS if "One-hot" in summary[s.name]]
        mean_of = lambda entries, kinds: float(np.mean([e[k]["psnr"] for e in entries for k in kinds]))  # noqa: E731
        out[method] = {
            "slopes_in_range": [e["fit_in_range"]["slope"] for e in sweeps],
            "r_in_range": [e["fit_in_range"]["r"] for e in sweeps],
            "right_sign_every_sweep": all(e["fit_all"]["slope"] > 0 for e in sweeps),
            "psnr_in_and_intermediate": mean_of(sweeps, ("in-range", "intermediate")),
            "psnr_over_onehot": (mean_of(sweeps, ("in-range", "intermediate")) - mean_of(onehot, ("in-range", "intermediate")))
            if onehot else float("nan"),
            "out_of_range_minus_in_range": mean_of(sweeps, ("out-of-range",)) - mean_of(sweeps, ("in-range",)),
        }
    return out


# ------------------------------------------------------------------ report
def figure(rows: dict[str, list[dict[str, np.ndarray]]], path: Path) -> Path:
    """Rows = parameter values, columns = truth and the figure's methods; one panel per sweep (central axial slice)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = ("truth", *FIGURE_COLUMNS)
    n_rows = max(len(r) for r in rows.values())
    fig = Figure(figsize=(1.6 * len(columns) * len(rows), 1.6 * n_rows + 0.6))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_rows, len(columns) * len(rows), wspace=0.02, hspace=0.08)
    for s, (name, sweep_rows) in enumerate(rows.items()):
        for i, row in enumerate(sweep_rows):
            for j, column in enumerate(columns):
                ax = fig.add_subplot(grid[i, s * len(columns) + j])
                volume = row.get(column)
                if volume is not None:
                    ax.imshow(volume[volume.shape[0] // 2], cmap="gray", vmin=0.0, vmax=1.0, origin="lower")
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{name}\n{column}" if j == 0 else column, fontsize=7)
                if j == 0:
                    ax.text(0.03, 0.97, f"{row['value']:.3g}", transform=ax.transAxes, fontsize=7, color="yellow",
                            va="top", ha="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def markdown(config: common.BenchmarkConfig, result: dict[str, Any], methods: list[str]) -> str:
    summary, plan = result["summary"], result["plan"]
    lines = [f"{len(result['test_cases'])} held-out subjects; trained {config.budget_text()} on "
             f"{len(result['train_cases'])} wide-protocol phantom cases; PSNR/SSIM with the papers' scaling inside the "
             "brain; contrast m_a - m_b on the MRI contract's scale (brain 0.5/99.5 percentiles -> 0/1).", ""]
    lines += ["| sweep | contrast | training range | values (in / intermediate / out) |", "|---|---|---|---|"]
    for sweep in SWEEPS:
        values = plan[sweep.name]["values"]
        text = " / ".join(", ".join(f"{v:.3g}" for k, v in values if k == kind)
                          for kind in ("in-range", "intermediate", "out-of-range"))
        low, high = plan[sweep.name]["training_range"]
        lines.append(f"| {sweep.name} | {sweep.contrast[0].upper()} vs {sweep.contrast[1].upper()} | "
                     f"{low:.3g}-{high:.3g} | {text} |")
    lines += ["", "**Contrast slope (predicted on true) and Pearson r, in-range / all values; PSNR (dB) per kind of value**", "",
              "| sweep | method | slope in-range | r in-range | slope all | r all | PSNR in | PSNR intermediate | PSNR out | SSIM in |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for sweep in SWEEPS:
        for method in methods:
            e = summary[sweep.name].get(method)
            if e is None:
                continue
            fi, fa = e["fit_in_range"], e["fit_all"]
            lines.append(f"| {sweep.name} | {method} | {fi['slope']:.2f} | {fi['r']:.2f} | {fa['slope']:.2f} | {fa['r']:.2f} | "
                         f"{e['in-range']['psnr']:.2f} | {e['intermediate']['psnr']:.2f} | {e['out-of-range']['psnr']:.2f} | "
                         f"{e['in-range']['ssim']:.3f} |")
    shown = [m for m in ("GFM", "One-hot", QMRI) if m in methods]
    lines += ["", f"**Tissue means, predicted / true (contract scale), {', '.join(shown)}**", "",
              "| sweep | value | " + " | ".join(f"{m} {t.upper()}" for m in shown for t in TISSUE_CLASSES) + " |",
              "|---|---|" + "---|" * (len(shown) * len(TISSUE_CLASSES))]
    for sweep in SWEEPS:
        entries = {m: summary[sweep.name].get(m) for m in shown}
        first = next((e for e in entries.values() if e is not None), None)
        if first is None:
            continue
        for value in first["tissue_means"]:
            cells = [f"{e['tissue_means'][value][t][0]:.2f} / {e['tissue_means'][value][t][1]:.2f}" if e else "–"
                     for e in entries.values() for t in TISSUE_CLASSES]
            lines.append(f"| {sweep.name} | {value} | " + " | ".join(cells) + " |")
    lines += ["", "**Prompt arithmetic's response** (std of alpha / beta across the sweep's values over their std across "
              "channels, first subject; 0 = the prompt's parameter is ignored)", "",
              "| sweep | " + " | ".join(f"{m} alpha | {m} beta" for m in methods if m != CEILING) + " |",
              "|---|" + "---|---|" * len([m for m in methods if m != CEILING])]
    for sweep in SWEEPS:
        response = plan[sweep.name].get("prompt_response", {})
        cells = []
        for method in (m for m in methods if m != CEILING):
            r = response.get(method)
            cells += [f"{r['alpha']:.3f}", f"{r['beta']:.3f}"] if r else ["–", "–"]
        lines.append(f"| {sweep.name} | " + " | ".join(cells) + " |")
    if result.get("real_templates"):
        lines += ["", "**Real ICBM152 templates** (one model per method: T1w -> T2w and -> PD-weighted, asked as a T2w spin "
                  "echo at TR 3300 ms and the template's TE; PSNR dB / SSIM, papers' scaling in the brain)", "",
                  "| target | " + " | ".join(next(iter(result["real_templates"].values()))["scores"]) + " |",
                  "|---|" + "---|" * len(next(iter(result["real_templates"].values()))["scores"])]
        for name, entry in result["real_templates"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v['psnr']:.2f} / {v['ssim']:.3f}" for v in entry["scores"].values()) + " |")
    if result.get("qmap_errors"):
        lines += ["", "**q-map error of the qMRI head** (mean over held-out subjects and sources T1w, T2w; pure-tissue "
                  "voxels; never a training signal)", "", "| tissue | quantity | predicted (ms) | true (ms) | MAE (ms) | relative |",
                  "|---|---|---|---|---|---|"]
        for key, e in result["qmap_errors"]["summary"].items():
            tissue, quantity = key.split()
            lines.append(f"| {tissue.upper()} | {quantity.upper()} | {e['predicted']:.0f} | {e['true']:.0f} | {e['mae']:.0f} | "
                         f"{e['relative']:.2f} |")
    lines += ["", "**Targets** (GFM: slope 0.7-1.3 and r >= 0.95 in range, right sign everywhere, >= 2 dB over one-hot, "
              "out-of-range within 3 dB of in-range)", "",
              "| method | slopes in-range | r in-range | right sign | PSNR in+intermediate | over one-hot | out - in |",
              "|---|---|---|---|---|---|---|"]
    for method, h in result["headline"].items():
        lines.append(f"| {method} | {', '.join(f'{s:.2f}' for s in h['slopes_in_range'])} | "
                     f"{', '.join(f'{r:.2f}' for r in h['r_in_range'])} | {'yes' if h['right_sign_every_sweep'] else 'no'} | "
                     f"{h['psnr_in_and_intermediate']:.2f} | {h['psnr_over_onehot']:+.2f} | {h['out_of_range_minus_in_range']:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=[t for _, t in METHODS],
                        help=f"trainers to compare (default all: {' '.join(t for _, t in METHODS)})")
    parser.add_argument("--protocols-per-modality", type=int, default=3,
                        help="images of each MR modality per subject, each at its own drawn protocol (default 3)")
    parser.add_argument("--affine-hidden", type=int, default=128,
                        help="hidden width of the GFM's prompt -> (alpha, beta) MLP written into the plans (default 128; "
                             "0: the paper's linear map, the plans' default)")
    parser.add_argument("--real-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real_mni2mm",
                        help="the real MNI 2 mm templates (ICBM152 T1w/T2w/PD); absent: that part is skipped")
    parser.add_argument("--qmri-gain", choices=("patch", "prompt"), default=None,
                        help="gfm_qmri's receiver gain in training, written into new plans: one least-squares gain per "
                             "rendered patch (the default) or one per protocol, predicted from the prompt's parameters")
    parser.add_argument("--qmap-hidden", type=int, nargs="+", default=None,
                        help="widths of gfm_qmri's pointwise map head, written into new plans (default 64 64)")
    parser.add_argument("--qmri-compartments", type=int, default=None,
                        help="gfm_qmri's compartments per voxel, written into new plans (default 1: one set of effective "
                             "maps; 3: grey/white/CSF-started compartments whose signals add)")
    parser.add_argument("--qmri-compartment-spread", type=float, default=None,
                        help="gfm_qmri: each compartment's T1 and T2 within this factor of its start, written into new "
                             "plans (default 0: the wide ranges)")
    args = parser.parse_args(argv)
    config = common.make_config(args)
    config.dataset_id, config.name = 975, "PromptSweep"
    if args.quick:  # 40 subjects x 3 protocols per MR modality, 200 epochs x 25 iterations per method
        config.cases = args.cases or 40
        config.epochs = args.epochs or 200
        config.neuroclip_epochs = args.neuroclip_epochs or 8
        config.max_test_cases = args.max_test_cases or 3
    config.extra["protocols_per_modality"] = args.protocols_per_modality
    config.extra["affine_hidden"] = args.affine_hidden
    config.extra["qmri_kwargs"] = {**({"qmri_gain": args.qmri_gain} if args.qmri_gain else {}),
                                   **({"qmap_hidden": list(args.qmap_hidden)} if args.qmap_hidden else {}),
                                   **({"qmri_compartments": args.qmri_compartments} if args.qmri_compartments else {}),
                                   **({"qmri_compartment_spread": args.qmri_compartment_spread}
                                      if args.qmri_compartment_spread else {})}
    methods = tuple((label, trainer) for label, trainer in METHODS if trainer in args.methods)
    common.setup(config, args.verbose)
    started = time.perf_counter()
    ensure_dataset(config)
    result = run(config, methods)
    real_dir = args.real_dir.resolve()
    if (real_dir / "brainmask_bin.nii.gz").is_file():
        predictors = {label: common.load_predictor(config, common.train(config, trainer, TASKS)[0]) for label, trainer in methods}
        result["real_templates"] = real_template_scores(predictors, real_dir)
    else:
        logger.warning("real templates skipped: %s is absent", real_dir)
    labels = [label for label, _ in methods] + [CEILING]
    result["headline"] = headline(result["summary"], labels)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    figure_path = figure(result.pop("_figure"), config.out / "prompt_sweep.png")
    text = markdown(config, result, labels) + f"\nFigure: {figure_path}; wall time {result['wall_seconds']:.0f} s\n"
    common.write_results(config, "prompt_sweep", finite_or_none(result), text)
    logger.info("prompt sweep done in %.0f s\n%s", time.perf_counter() - started, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
