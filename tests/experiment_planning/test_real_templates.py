"""Real brain templates (../shared/data/real_mni2mm) through fingerprint and preprocessing.

Skipped when that folder is absent. The files are copied into a temporary dataset, never into the repo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.experiment_planning import api
from unisyn_v2.metadata.modalities import Modality, ModalityFamily, get_modality, register_modality
from unisyn_v2.preprocessing.case_preprocessor import restore_prediction
from unisyn_v2.preprocessing.case_store import load_preprocessed_case
from unisyn_v2.preprocessing.cropping import bbox_from_list

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real_mni2mm"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real_mni2mm is absent")

CASES = {
    "icbm": {"T1w_icbm152avg.nii.gz": "T1w", "T2w_icbm152avg.nii.gz": "T2w", "PDw_icbm152avg.nii.gz": "PD", "CT_rorden30_HU.nii.gz": "CT"},
    "fil12": {"T1w_fil12_mprage.nii.gz": "T1w", "PET_H2O15_fil12_s8.nii.gz": "H2O-PET"},
}


def test_real_templates_fingerprint_and_preprocess(unisyn_dirs: dict[str, Path]) -> None:
    try:
        get_modality("H2O-PET")
    except ValueError:
        register_modality(Modality("H2O-PET", ModalityFamily.PET, tracer="H2O", description="15O-water perfusion"))
    root = unisyn_dirs["raw"] / "Dataset050_RealMNI"
    cases = []
    for case_id, files in CASES.items():
        (root / case_id).mkdir(parents=True)
        shutil.copyfile(REAL / "brainmask_bin.nii.gz", root / case_id / "brainmask.nii.gz")
        images = []
        for file, modality in files.items():
            shutil.copyfile(REAL / file, root / case_id / file)
            metadata = {"unit": "SUVR"} if modality == "H2O-PET" else {}
            images.append({"file": f"{case_id}/{file}", "modality": modality, "metadata": metadata})
        cases.append({"id": case_id, "brain_mask": f"{case_id}/brainmask.nii.gz", "images": images})
    (root / "dataset.json").write_text(json.dumps({"name": "RealMNI", "cases": cases}))

    plans = api.plan_and_preprocess(50, num_processes=1, progress=False)
    pre = unisyn_dirs["preprocessed"] / "Dataset050_RealMNI"
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
    ct = fingerprint["modalities"]["CT"]["foreground_intensities"]
    assert 15.0 < ct["percentile_50_0"] < 60.0, ct  # brain tissue in HU
    assert ct["min"] >= -1024.0
    assert fingerprint["median_spacing_zyx"] == pytest.approx([2.0, 2.0, 2.0])
    assert plans.normalization["CT"].scheme == "ct_brain_window"
    window = plans.normalization["CT"].kwargs
    assert window["window_low"] < ct["percentile_00_5"] < ct["percentile_99_5"] < window["window_high"]
    assert plans.normalization["H2O-PET"].scheme == "pet_suv"

    case = load_preprocessed_case(pre / plans.configuration().data_identifier, "icbm")
    ct_channel = case.data[case.channel_of("CT")]
    restored, unit = restore_prediction(ct_channel, case.properties, plans, "CT")
    original, _ = read_image(REAL / "CT_rorden30_HU.nii.gz")
    assert unit == "HU"
    box = bbox_from_list(case.properties["bbox_zyx"])  # outside the head's box the restore writes air
    assert np.abs(restored[box] - np.clip(original, -1024, 3071)[box]).max() < 0.5
    outside = np.ones(original.shape, bool)
    outside[box] = False
    assert np.all(restored[outside] == -1000.0)

    pet = load_preprocessed_case(pre / plans.configuration().data_identifier, "fil12")
    pet_channel = pet.data[pet.channel_of("H2O-PET")]
    brain = pet.mask.astype(bool)
    scale = plans.normalization["H2O-PET"].kwargs["dataset_scale"]
    assert np.mean(pet_channel[brain]) * scale == pytest.approx(1.0, rel=1e-3)  # SUVR: brain mean 1
    t1 = case.data[case.channel_of("T1w")]
    assert 0.3 < np.median(t1[case.mask.astype(bool)]) < 1.0  # percentile scaling inside the brain
