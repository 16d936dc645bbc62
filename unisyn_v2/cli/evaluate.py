"""``unisyn_evaluate``: metrics of predictions against references, and comparison figures (thin over evaluation).

Protocols: ``papers`` (each image scaled to [0, 1], TUMSyn/UniSyn numbers), ``synthrad`` (CT in HU,
SynthRAD2023 window, MAE in HU) and ``reference`` (both images on the reference's 0.5-99.5th percentile
range, the trainers' validation); ``auto`` (default) picks ``synthrad`` when every prediction's sidecar
says its target is CT and ``papers`` otherwise. The protocol used is recorded in summary.json.
Regions: ``psnr``/``ssim``/``mae`` inside ``--mask`` (brain) when given, else the whole image (``synthrad``:
the head); ``head_*`` always, inside ``--head_mask`` or a head mask derived from the reference (threshold,
largest component, hole filling; CT > -500 HU); ``bone_dice``/``bone_mae`` (> 300 HU) for CT references.
``--modality`` names the references' modality; without it each reference is taken as CT when >= 1 % of it
is below -500 and some of it above 300, else as MRI-like. A reference and prediction in grossly different
units (CT in HU vs not, or a factor > 5 in scale) stop the evaluation with a one-line error naming both
files (a warning under ``papers``, which scales each image on its own); ``--allow_scale_mismatch`` makes it
a warning.
Figures (``--figure``): ``<summary folder>/figures/<case>.png`` with source, synthesis, ground truth and
|error| in three orientations; the source is found in ``--source DIR`` (a file named ``<case>.*`` or
``<case>_*``) or, failing that, from the prediction's sidecar.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.evaluation.evaluate import evaluate_folders, match_files, split_extension
from unisyn_v2.evaluation.figures import save_comparison_figure
from unisyn_v2.evaluation.protocols import Protocol

logger = logging.getLogger(__name__)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and split_extension(p.name)[1])


def _sidecar(prediction: Path) -> dict[str, Any]:
    path = prediction.with_name(split_extension(prediction.name)[0] + ".json")
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def choose_protocol(name: str, pred_dir: Path) -> Protocol:
    """``auto``: synthrad when every prediction sidecar names CT as the target, else papers."""
    if name != "auto":
        return Protocol(name)
    targets = [_sidecar(p).get("target_modality") for p in _images(pred_dir)]
    protocol = Protocol.SYNTHRAD if targets and all(t == "CT" for t in targets) else Protocol.PAPERS
    logger.info("protocol auto -> %s", protocol.value)
    return protocol


def _find_source(case: str, prediction: Path, source_dir: Path | None) -> Path | None:
    if source_dir is not None:
        for path in _images(source_dir):
            stem = split_extension(path.name)[0]
            if stem == case or stem.startswith(case + "_"):
                return path
    for entry in _sidecar(prediction).get("source_images", []):
        if isinstance(entry, dict) and Path(str(entry.get("file", ""))).is_file():
            return Path(entry["file"])
    return None


def write_figures(ref_dir: Path, pred_dir: Path, figure_dir: Path, summary: dict[str, Any],
                  source_dir: Path | None = None) -> list[Path]:
    """One PNG per evaluated case (source column dropped when no source of the same grid is found)."""
    refs = _images(ref_dir)
    predictions, _ = match_files(refs, _images(pred_dir))
    metrics = {c["reference"]: c for c in summary.get("per_case", [])}
    written = []
    for ref_path in refs:
        if ref_path.name not in predictions:
            continue
        pred_path = predictions[ref_path.name]
        case = split_extension(ref_path.name)[0]
        reference, geometry = read_image(ref_path)
        synthesis, _ = read_image(pred_path)
        source_path = _find_source(_sidecar(pred_path).get("case_id", case), pred_path, source_dir)
        source = read_image(source_path)[0] if source_path is not None else None
        if source is not None and source.shape != reference.shape:
            logger.warning("%s: source %s has shape %s, not the reference's %s; figure without source",
                           case, source_path, source.shape, reference.shape)
            source = None
        values = metrics.get(ref_path.name, {})
        title = case + "".join(f"  {k.upper()} {values[k]:.3f}" for k in ("psnr", "ssim", "mae") if isinstance(values.get(k), float))
        path = save_comparison_figure(figure_dir / f"{case}.png", source, synthesis, reference,
                                      spacing_zyx=geometry.spacing_zyx, suptitle=title)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="unisyn_evaluate", description="PSNR / SSIM / MAE of predictions against references.",
                                     epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-ref", "--reference", required=True, help="folder of reference images")
    parser.add_argument("-pred", "--prediction", required=True, help="folder of predictions (<case>_<target>.nii.gz pairs with <case>_<target>.* or <case>.*)")
    parser.add_argument("--mask", "--mask_dir", dest="mask", default=None,
                        help="folder of brain masks, named like the references; psnr/ssim/mae inside the mask")
    parser.add_argument("--head_mask", "--head_mask_dir", dest="head_mask", default=None,
                        help="folder of head (body) masks for head_* and bone metrics (default: derived from each reference)")
    parser.add_argument("--lesion_mask", "--lesion_mask_dir", dest="lesion_mask", default=None,
                        help="folder of lesion label maps named like the references: lesion_psnr, normal_psnr and "
                             "lesion_gap_db for cases with lesions")
    parser.add_argument("--modality", default=None,
                        help="modality of the references, e.g. CT or FLAIR (default: inferred per case, CT or MRI-like)")
    parser.add_argument("--allow_scale_mismatch", action="store_true",
                        help="score a reference and prediction in grossly different units with a warning instead of an error")
    parser.add_argument("--protocol", default="auto", choices=["auto", *[p.value for p in Protocol]])
    parser.add_argument("-o", "--output", default=None, help="summary JSON path (default <pred>/summary.json; CSV beside it)")
    parser.add_argument("--figure", action="store_true", help="also write a comparison PNG per case")
    parser.add_argument("--source", default=None, help="folder of source images for the figures")
    add_common_arguments(parser)
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    ref_dir, pred_dir = Path(args.reference), Path(args.prediction)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    protocol = choose_protocol(args.protocol, pred_dir)
    output = Path(args.output) if args.output else pred_dir / "summary.json"
    summary = evaluate_folders(ref_dir, pred_dir, protocol, args.mask, output, head_mask_dir=args.head_mask,
                               modality=args.modality, allow_scale_mismatch=args.allow_scale_mismatch,
                               lesion_mask_dir=args.lesion_mask)
    mean = summary["mean"]
    line = (f"{summary['n_cases']} case(s), protocol {protocol.value}: {summary['region']} PSNR {mean['psnr']:.3f}, "
            f"SSIM {mean['ssim']:.4f}, MAE {mean['mae']:.4f}; head PSNR {mean['head_psnr']:.3f}, "
            f"SSIM {mean['head_ssim']:.4f}, MAE {mean['head_mae']:.4f}")
    if "bone_dice" in mean:
        line += f"; bone Dice {mean['bone_dice']:.3f}, bone MAE {mean['bone_mae']:.1f} HU"
    if "lesion_psnr" in mean:
        line += (f"; lesion PSNR {mean['lesion_psnr']:.3f} vs normal {mean['normal_psnr']:.3f} "
                 f"(gap {mean['lesion_gap_db']:.2f} dB)")
    print(line)
    print(output)
    print(output.with_suffix(".csv"))
    if args.figure:
        for path in write_figures(ref_dir, pred_dir, output.parent / "figures", summary, Path(args.source) if args.source else None):
            print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point ``unisyn_evaluate``."""
    return run_cli(_evaluate, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

