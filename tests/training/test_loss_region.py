"""Where the synthesis loss counts (issue 17): the head for CT targets, the brain for MRI, as the plans say;
the head mask travels from preprocessing through the patch loader to the trainer's voxel weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training_fixtures import DATASET_NAME, make_trainer, tiny_plans, write_text_encoder, write_training_dataset
from unisyn_v2.contracts.plans import DEFAULT_LOSS_REGION, Plans, PlansError
from unisyn_v2.preprocessing.case_store import PreprocessedCase, load_preprocessed_case, save_preprocessed_case
from unisyn_v2.training.data.cases import CaseCollection
from unisyn_v2.training.gfm_trainer import GFMTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_plans_default_loss_region_and_validation() -> None:
    plans = tiny_plans()
    assert plans.loss_region("CT") == "head" and plans.loss_region("MRI") == "brain" and plans.loss_region("PET") == "brain"
    data = plans.to_dict()
    assert data["training"]["loss_region"] == DEFAULT_LOSS_REGION
    data["training"]["loss_region"] = {"PET": "head"}
    assert Plans.from_dict(data).loss_region("PET") == "head"
    assert Plans.from_dict(data).loss_region("CT") == "head"  # a family left out keeps its default
    for bad, field in (({"CT": "skull"}, "training.loss_region.CT"), ({"XR": "head"}, "training.loss_region.XR")):
        data["training"]["loss_region"] = bad
        with pytest.raises(PlansError, match=field.replace(".", r"\.")):
            Plans.from_dict(data, source="p.json")


@pytest.fixture
def toy(unisyn_dirs: dict[str, Path]) -> dict[str, Path]:
    _folder, plans = write_training_dataset(unisyn_dirs["preprocessed"], num_cases=3)
    write_text_encoder(unisyn_dirs["results"], plans)
    return unisyn_dirs


def test_ct_targets_weigh_the_head_and_mri_targets_the_brain(toy: dict[str, Path]) -> None:
    trainer = make_trainer(GFMTrainer, toy)
    trainer.initialize()
    loader, _ = trainer.build_dataloaders()
    batch = next(iter(loader))
    assert batch["head"].shape == batch["mask"].shape and (batch["head"] >= batch["mask"]).all()
    b = trainer.batch_to_device(batch)
    for i, (source, target) in enumerate(zip(batch["source_descriptions"], batch["target_descriptions"])):
        for description, key in ((target, "weight"), (source, "source_weight")):
            region = b["head"][i] if description.modality == "CT" else b["mask"][i]
            expected = region.float() + trainer.background_weight * (1 - region.float())
            assert torch.equal(b[key][i], expected), (description.modality, key)
    ring = (b["head"] > 0) & (b["mask"] == 0)
    assert ring.any()  # the toy head is wider than the brain, so the two regions differ


def test_a_case_without_head_mask_trains_in_the_brain(toy: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    folder = toy["preprocessed"] / DATASET_NAME / tiny_plans().configuration().data_identifier
    (folder / "case_000_head.npy").unlink()  # as preprocessed by a version before head masks
    case = load_preprocessed_case(folder, "case_000")
    assert case.head is None
    data, mask, head = CaseCollection(folder, ["case_000"]).arrays("case_000")
    assert head is mask and "no head mask" in caplog.text


def test_head_mask_round_trips_through_the_case_store(tmp_path: Path) -> None:
    head = np.zeros((4, 5, 6), np.uint8)
    head[1:3, 1:4, 1:5] = 1
    case = PreprocessedCase("c", np.zeros((1, 4, 5, 6), np.float32), head * 0, {"channels": []}, head)
    save_preprocessed_case(tmp_path, case)
    assert np.array_equal(load_preprocessed_case(tmp_path, "c").head, head)
    save_preprocessed_case(tmp_path, replace(case, case_id="d", head=None))
    assert not (tmp_path / "d_head.npy").exists() and load_preprocessed_case(tmp_path, "d").head is None
