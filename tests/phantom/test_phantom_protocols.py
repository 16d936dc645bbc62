"""Protocol range sets of the phantom and rendering a case at any protocol (tiny grids, seconds)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.dataset.integrity import verify_dataset_integrity
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.prompts import build_prompt
from unisyn_v2.phantom import (
    PROTOCOL_RANGES, PhantomCase, PhantomSpec, ProtocolRangeSet, SequenceRanges, draw_protocol, generate_phantom_dataset,
    nominal_protocol, protocol_problems, read_phantom_spec, render_subject, simulate_image, typical_protocol,
)
from unisyn_v2.cli.phantom import main as phantom_main
from unisyn_v2.cli.phantom import render_main
from unisyn_v2.phantom.generator import PHANTOM_MODALITIES
from unisyn_v2.phantom.protocols import CLINICAL, WIDE, flair_null_ti
from unisyn_v2.phantom.render import case_index_of

MR = ("T1w", "T1CE", "T2w", "PD", "FLAIR", "T2star", "SWI")
GRID = {"shape": (24, 24, 24), "voxel_size_mm": (8.0, 8.0, 8.0)}


def draws(ranges: str, modality: str, n: int, field: float | None = None) -> list[ImageMetadata]:
    rng = np.random.default_rng([17, len(modality), n])
    return [draw_protocol(modality, rng, voxel_size=(1.0, 1.0, 1.0), field_strength=field, ranges=ranges) for _ in range(n)]


def test_registry_default_and_clinical_typical_is_the_nominal_protocol() -> None:
    assert set(PROTOCOL_RANGES) == {"clinical", "wide"} and PROTOCOL_RANGES["clinical"] is CLINICAL
    for modality in MR:
        for field in (1.5, 3.0):
            assert typical_protocol(modality, field, "clinical") == nominal_protocol(modality, field)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert draw_protocol("T2w", rng_a) == draw_protocol("T2w", rng_b, ranges="clinical")
    with pytest.raises(ValueError, match="unknown protocol ranges 'narrow'"):
        draw_protocol("T2w", rng_a, ranges="narrow")


def test_clinical_draws_are_the_ones_datasets_always_had() -> None:
    """Fingerprint of clinical draws and the random state they leave, taken from the code before range sets."""
    rows = []
    for seed in range(50):
        for name in PHANTOM_MODALITIES:
            rng = np.random.default_rng([seed, 11])
            rows.append([name, draw_protocol(name, rng, voxel_size=(1.0, 1.0, 1.0)).to_dict(), float(rng.random())])
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert digest == "4416e503c153fbc0370fe7cbeeba8d6cfce7619c3c342ff89e510b664cdcd325"


def test_wide_ranges_cover_what_the_issue_asks() -> None:
    asked = {  # (modality, sequence) -> parameter -> (low, high) that must lie inside the set's range
        ("T2w", "spin echo"): {"echo_time": (30, 250), "repetition_time": (1500, 8000)},
        ("PD", "spin echo"): {"echo_time": (10, 40), "repetition_time": (2000, 4000)},
        ("FLAIR", "inversion recovery"): {"csf_null_fraction": (0.6, 1.4), "repetition_time": (8000, 11000),
                                          "echo_time": (80, 140)},
        ("T1w", "MPRAGE"): {"inversion_time": (400, 1400), "repetition_time": (2000, 2700), "echo_time": (2, 4),
                            "flip_angle": (7, 12)},
        ("T1w", "spoiled gradient echo"): {"repetition_time": (10, 40), "echo_time": (3, 6), "flip_angle": (5, 40)},
    }
    for field in (1.5, 3.0):
        for (modality, sequence), parameters in asked.items():
            ranges = WIDE.sequence(modality, field, sequence).ranges()
            for name, (low, high) in parameters.items():
                assert ranges[name][0] <= low and ranges[name][1] >= high, (modality, sequence, name, ranges[name])
    # ... and the draws reach both ends
    te = [m.echo_time for m in draws("wide", "T2w", 1500)]
    assert min(te) < 33 and max(te) > 225
    flair = [m.inversion_time / flair_null_ti(m.repetition_time, m.field_strength) for m in draws("wide", "FLAIR", 1500)]
    assert min(flair) < 0.63 and max(flair) > 1.37
    t1 = draws("wide", "T1w", 1500)
    mprage_ti = [m.inversion_time for m in t1 if m.inversion_time is not None]
    gre_flip = [m.flip_angle for m in t1 if m.inversion_time is None]
    assert 0.3 < len(gre_flip) / len(t1) < 0.5 and min(mprage_ti) < 420 and max(mprage_ti) > 1330
    assert min(gre_flip) <= 6 and max(gre_flip) >= 38
    # clinical stays narrow: the contrast barely moves there, which is why wide exists
    assert max(m.echo_time for m in draws("clinical", "T2w", 300)) <= 120


@pytest.mark.parametrize("ranges", sorted(PROTOCOL_RANGES))
def test_every_drawn_protocol_is_physically_consistent_and_in_range(ranges: str) -> None:
    range_set = PROTOCOL_RANGES[ranges]
    for modality in MR:
        for field in (1.5, 3.0):
            allowed = [s.ranges() for s in range_set.sequences(modality, field)]
            for m in draws(ranges, modality, 400, field):
                assert protocol_problems(modality, m) == [], (modality, m)
                assert m.problems() == [], (modality, m)
                assert m.echo_time < m.repetition_time
                if m.inversion_time is not None:
                    assert m.inversion_time + m.echo_time < m.repetition_time
                # inside the ranges of one of its sequences (rounding: half a last digit)
                assert any(all(r[k][0] - 0.5 <= getattr(m, k) <= r[k][1] + 0.5 for k in ("repetition_time", "echo_time",
                                                                                           "flip_angle"))
                           and (m.inversion_time is None) == ("inversion_time" not in r and "csf_null_fraction" not in r)
                           for r in allowed), (modality, m)


def test_wide_draws_log_uniform_times() -> None:
    """Half the T2w TEs fall below the geometric mid-range (86.6 ms); a uniform draw would put 26 % there."""
    te = np.array([m.echo_time for m in draws("wide", "T2w", 2000)])
    assert 0.45 < float(np.mean(te < math.sqrt(30 * 250))) < 0.55
    assert typical_protocol("T2w", 3.0, "wide").echo_time == round(math.sqrt(30 * 250), 1)
    flair = typical_protocol("FLAIR", 3.0, "wide")
    assert flair.inversion_time == round(flair_null_ti(flair.repetition_time, 3.0))  # uniform fraction: mid = 1.0
    assert typical_protocol("T1w", 3.0, "wide", "spoiled gradient echo").inversion_time is None


def test_protocol_problems_and_range_set_validation() -> None:
    assert protocol_problems("T2w", ImageMetadata(repetition_time=100.0, echo_time=120.0))[0].startswith("echo_time")
    assert "TI + TE" in protocol_problems("FLAIR", ImageMetadata(repetition_time=3000.0, echo_time=120.0,
                                                                 inversion_time=2900.0))[0]
    assert "no inversion pulse" in protocol_problems("T2w", ImageMetadata(repetition_time=3000.0, echo_time=90.0,
                                                                          inversion_time=900.0))[0]
    assert protocol_problems("T1w", ImageMetadata(repetition_time=20.0, echo_time=4.0, flip_angle=0.0))
    assert protocol_problems("CT", ImageMetadata(kvp=120.0)) == []
    good = SequenceRanges("spin echo", 1.0, (3000.0, 4000.0), (80.0, 100.0), (90.0, 90.0))
    with pytest.raises(ValueError, match="probabilities must sum to 1"):
        ProtocolRangeSet("bad", "", {"T2w": (SequenceRanges("spin echo", 0.5, (3000.0, 4000.0), (80.0, 100.0), (90.0, 90.0)),)})
    with pytest.raises(ValueError, match="echo_time low"):
        ProtocolRangeSet("bad", "", {"T2w": (SequenceRanges("spin echo", 1.0, (50.0, 4000.0), (80.0, 100.0), (90.0, 90.0)),)})
    with pytest.raises(ValueError, match="inversion_time \\+ echo_time"):
        ProtocolRangeSet("bad", "", {"FLAIR": (SequenceRanges("ir", 1.0, (2000.0, 4000.0), (80.0, 100.0), (90.0, 90.0),
                                                              inversion_time=(1000.0, 1950.0)),)})
    assert ProtocolRangeSet("ok", "", {"T2w": (good,)}).sequences("T2w", 3.0) == (good,)


def test_wide_dataset_is_valid_records_its_ranges_and_draws_wide(tmp_path: Path) -> None:
    out = generate_phantom_dataset(tmp_path / "wide", 6, 4, modalities=["T1w", "T2w", "FLAIR"], complete=True,
                                   protocol_ranges="wide", **GRID)
    assert verify_dataset_integrity(out) == []
    dataset = json.loads((out / "dataset.json").read_text())
    assert "protocol ranges wide" in dataset["description"]
    spec = read_phantom_spec(out)
    assert spec == PhantomSpec(4, (24, 24, 24), (8.0, 8.0, 8.0), ("T1w", "T2w", "FLAIR"), "wide")
    assert PhantomSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    te = [i["metadata"]["echo_time"] for c in dataset["cases"] for i in c["images"] if i["modality"] == "T2w"]
    clinical = generate_phantom_dataset(tmp_path / "clinical", 6, 4, modalities=["T1w", "T2w", "FLAIR"], complete=True,
                                        **GRID)
    te_clinical = [i["metadata"]["echo_time"] for c in json.loads((clinical / "dataset.json").read_text())["cases"]
                   for i in c["images"] if i["modality"] == "T2w"]
    assert te != te_clinical and all(80 <= t <= 120 for t in te_clinical)
    with pytest.raises(ValueError, match="unknown protocol ranges"):
        generate_phantom_dataset(tmp_path / "bad", 1, 0, protocol_ranges="extreme", **GRID)


@pytest.mark.parametrize("options", [{"protocol_ranges": "wide", "skull_strip": True, "complete": True,
                                      "modalities": ["T1w", "T2w", "FLAIR", "CT", "FDG-PET"]},
                                     {}])
def test_render_reproduces_every_image_of_a_generated_dataset(tmp_path: Path, options: dict) -> None:
    out = generate_phantom_dataset(tmp_path / "ds", 3, 9, **GRID, **options)
    spec = read_phantom_spec(out)
    for case in json.loads((out / "dataset.json").read_text())["cases"]:
        rebuilt = PhantomCase(spec, case["id"])
        assert np.array_equal(read_image(out / case["brain_mask"])[0], rebuilt.anatomy.mask)
        for image in case["images"]:
            written = read_image(out / image["file"])[0]
            assert rebuilt.protocol(image["modality"]).to_dict() == image["metadata"]
            assert np.array_equal(rebuilt.render(image["modality"], image["metadata"], noise=True), written), image["file"]
            assert np.array_equal(render_subject(spec, case["id"], image["modality"], noise=True), written)
            clean = rebuilt.render(image["modality"])
            assert not np.array_equal(clean, written)
            brain = rebuilt.anatomy.mask > 0
            # the case's own receiver gain (drawn over 300-3000): only noise and bias differ
            assert abs(float(written[brain].mean()) / float(clean[brain].mean()) - 1.0) < 0.05


def test_render_protocol_patch_semantics() -> None:
    case = PhantomCase(PhantomSpec(2, (24, 24, 24), (8.0, 8.0, 8.0)), 0)
    own = case.protocol("T1w")
    gre = {"inversion_time": None, "repetition_time": 20.0, "echo_time": 4.0, "flip_angle": 20.0}
    full = case.metadata_for("T1w", gre)
    assert full.inversion_time is None and full.field_strength == own.field_strength
    assert full.manufacturer == own.manufacturer
    expected = simulate_image("T1w", case.anatomy.tissues, full, case.anatomy.subject, np.random.default_rng(0),
                              noise=False, bias=False)
    rendered = case.render("T1w", gre)
    ratio = rendered[case.anatomy.mask > 0] / np.maximum(expected[case.anatomy.mask > 0], 1e-9)
    assert np.allclose(ratio, ratio[0], rtol=1e-4)  # same physics up to the case's receiver gain
    with pytest.raises(ValueError, match="case sub-001, T1w: .*TI \\+ TE"):  # an MPRAGE TI does not fit a GRE TR
        case.render("T1w", {"repetition_time": 20.0, "echo_time": 4.0, "inversion_time": 900.0})
    with pytest.raises(ValueError, match="voxel_size"):
        case.render("T2w", {"voxel_size": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="echo_time"):
        case.render("T2w", {"echo_time": "long"})
    assert case_index_of("sub-003") == 2 and case_index_of(4) == 4
    with pytest.raises(ValueError, match="case id"):
        case_index_of("patient-3")


def tissue_means(case: PhantomCase, image: np.ndarray) -> dict[str, float]:
    """Mean of voxels that are at least 80 % one tissue."""
    return {t: float(image[case.anatomy.tissues[t] > 0.8].mean()) for t in ("gm", "wm", "csf")}


def test_parameter_sweeps_move_tissue_signals_as_physics_says() -> None:
    case = PhantomCase(PhantomSpec(1, (40, 40, 40), (5.0, 5.0, 5.0)), 0)
    t2 = [tissue_means(case, case.render("T2w", {"echo_time": te, "repetition_time": 4000.0}))
          for te in (30.0, 60.0, 100.0, 160.0, 250.0)]
    csf_gm = [m["csf"] / m["gm"] for m in t2]
    gm_wm = [m["gm"] / m["wm"] for m in t2]
    assert all(np.diff(csf_gm) > 0) and csf_gm[-1] > 3 * csf_gm[0]  # CSF (T2 ~1.8 s) outlasts GM (~0.1 s)
    assert all(np.diff(gm_wm) > 0)  # GM T2 > WM T2
    assert all(np.diff([m["gm"] for m in t2]) < 0)  # every tissue decays with TE
    own = case.protocol("FLAIR")
    null = flair_null_ti(own.repetition_time, own.field_strength)
    csf = [tissue_means(case, case.render("FLAIR", {"inversion_time": round(null * f)}))["csf"]
           for f in (0.6, 0.8, 1.0, 1.2, 1.4)]
    assert csf[2] == min(csf) and csf[0] > csf[1] > csf[2] < csf[3] < csf[4]  # |Mz| passes through zero at the null
    gre = {"inversion_time": None, "repetition_time": 20.0, "echo_time": 4.5}
    wm_gm = [(lambda m: m["wm"] / m["gm"])(tissue_means(case, case.render("T1w", {**gre, "flip_angle": fa})))
             for fa in (5.0, 10.0, 20.0, 40.0)]
    assert all(np.diff(wm_gm) > 0) and wm_gm[0] < 1.0 < wm_gm[-1]  # PD-weighted at 5 degrees, T1-weighted at 40


def test_cli_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert phantom_main(["-d", "5", "--cases", "2", "--seed", "6", "--shape", "24", "24", "24", "--voxel_size", "8", "8",
                         "8", "--modalities", "T1w", "T2w", "FLAIR", "--complete", "--protocol_ranges", "wide",
                         "--output_dir", str(out)]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    t2 = next(i for i in dataset["cases"][1]["images"] if i["modality"] == "T2w")
    rendered, mask = tmp_path / "again.nii.gz", tmp_path / "mask.nii.gz"
    assert render_main(["--dataset", str(out), "--case", "2", "--modality", "T2w", "--noise", "-o", str(rendered),
                        "--mask", str(mask)]) == 0
    assert np.array_equal(read_image(rendered)[0], read_image(out / t2["file"])[0])
    assert np.array_equal(read_image(mask)[0], read_image(out / dataset["cases"][1]["brain_mask"])[0])
    # the same phantom named by its options, at another TE, noise-free
    by_seed = ["--seed", "6", "--shape", "24", "24", "24", "--voxel_size", "8", "8", "8", "--modalities", "T1w", "T2w",
               "FLAIR", "--protocol_ranges", "wide", "--case", "sub-002"]
    te200 = tmp_path / "te200.nii.gz"
    assert render_main(by_seed + ["--modality", "T2w", "--metadata", '{"echo_time": 200}', "-o", str(te200)]) == 0
    spec = read_phantom_spec(out)
    expected = render_subject(spec, 1, "T2w", {"echo_time": 200.0})
    image, geometry = read_image(te200)
    assert np.array_equal(image, expected) and geometry.spacing_xyz == (8.0, 8.0, 8.0)
    # a prompt states the whole protocol: here a spoiled GRE T1w (its TI None removes the case's MPRAGE TI)
    t1 = ImageMetadata(field_strength=t2["metadata"]["field_strength"], repetition_time=20.0, echo_time=4.0,
                       flip_angle=25.0)
    gre = tmp_path / "gre.nii.gz"
    assert render_main(by_seed + ["--prompt", build_prompt("T1w", t1), "-o", str(gre)]) == 0
    patch = {"repetition_time": 20.0, "echo_time": 4.0, "flip_angle": 25.0, "inversion_time": None}
    assert np.array_equal(read_image(gre)[0], render_subject(spec, 1, "T1w", patch))
    # one-line errors, exit 2, nothing overwritten
    assert render_main(by_seed + ["--modality", "T2w", "-o", str(te200)]) == 2
    assert render_main(by_seed + ["--dataset", str(out), "--modality", "T2w", "-o", str(tmp_path / "x.nii.gz")]) == 2
    assert render_main(by_seed + ["--modality", "T2w", "--metadata", '{"echo_time": 9000}',
                                  "-o", str(tmp_path / "y.nii.gz")]) == 2
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "y.nii.gz").exists()
