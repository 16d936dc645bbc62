"""Several protocols per MR modality and subject (issue 16, item 3): the phantom writes them, dataset.json
accepts them, rendering rebuilds each, and the training pipeline pairs them (T2w TE 40 -> T2w TE 200)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.cli.train import main as train_main
from unisyn_v2.dataset.description import load_dataset_description
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.dataset.integrity import verify_dataset_integrity
from unisyn_v2.experiment_planning import api
from unisyn_v2.phantom import PhantomCase, PhantomSpec, generate_phantom_dataset, read_phantom_spec, render_subject
from unisyn_v2.cli.phantom import main as phantom_main
from unisyn_v2.cli.phantom import render_main
from unisyn_v2.phantom.protocols import PROTOCOL_RANGES, WIDE, ProtocolRangeSet, SequenceRanges
from unisyn_v2.training.data.cases import CaseCollection
from unisyn_v2.training.data.pair_sampler import PairSampler
from unisyn_v2.training.settings import parse_task_filter

GRID = {"shape": (24, 24, 24), "voxel_size_mm": (8.0, 8.0, 8.0)}
MR3 = ["T1w", "T2w", "FLAIR"]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_one_protocol_per_modality_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    """Digests of every file (images, masks, dataset.json, phantom.json) taken before repetitions existed
    (and before lesions and air sinuses: ``sinuses=False`` is the anatomy of that time)."""
    grid = {"shape": (16, 16, 16), "voxel_size_mm": (12.0, 12.0, 12.0), "sinuses": False}
    clinical = generate_phantom_dataset(tmp_path / "a", 4, 11, protocols_per_modality=1, **grid)
    wide = generate_phantom_dataset(tmp_path / "b", 3, 12, modalities=[*MR3, "CT"], complete=True, skull_strip=True,
                                    protocol_ranges="wide", **grid)
    assert folder_digest(clinical) == "cf093088fde5a5b138cc45a19a10ba433218734f33f8cbb483111cef15be3b2f"
    assert folder_digest(wide) == "8e6db4082d8ffa74874765c794c651e9c2c6ef2e257c0876c49e06cfede8300b"
    assert "protocols_per_modality" not in json.loads((clinical / "phantom.json").read_text())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="protocols_per_modality"):
            PhantomSpec(0, protocols_per_modality=bad)


@pytest.fixture(scope="module")
def repeated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom_dataset(tmp_path_factory.mktemp("rep") / "ds", 3, 5, modalities=[*MR3, "CT"], complete=True,
                                    protocol_ranges="wide", protocols_per_modality=3, **GRID)


def test_three_protocols_per_mr_modality_one_ct_and_image_one_unchanged(repeated: Path, tmp_path: Path) -> None:
    assert verify_dataset_integrity(repeated) == []
    spec = read_phantom_spec(repeated)
    assert spec.protocols_per_modality == 3
    assert PhantomSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    dataset = json.loads((repeated / "dataset.json").read_text())
    assert "3 protocols per MR modality" in dataset["description"]
    single = generate_phantom_dataset(tmp_path / "single", 3, 5, modalities=[*MR3, "CT"], complete=True,
                                      protocol_ranges="wide", **GRID)
    single_cases = json.loads((single / "dataset.json").read_text())["cases"]
    for case, alone in zip(dataset["cases"], single_cases):
        cid = case["id"]
        files = [i["file"] for i in case["images"]]
        assert files == [f"{cid}/{cid}{run}_{m}.nii.gz" for m in MR3 for run in ("", "_run-2", "_run-3")] + [f"{cid}/{cid}_CT.nii.gz"]
        for modality in MR3:
            protocols = [i["metadata"] for i in case["images"] if i["modality"] == modality]
            timings = {(p["repetition_time"], p["echo_time"], p.get("inversion_time"), p["flip_angle"]) for p in protocols}
            assert len(timings) == 3, (cid, modality, protocols)  # three different protocols ...
            session = {(p["field_strength"], p["manufacturer"], p["scanner_model"]) for p in protocols}
            assert len(session) == 1  # ... in one session
        # the first image of every modality is the one a one-protocol dataset has, byte for byte
        for image in alone["images"]:
            assert image in case["images"]
            assert (single / image["file"]).read_bytes() == (repeated / image["file"]).read_bytes()
    # the extra T2w protocols are drawn over the wide ranges, not near the first
    te = [i["metadata"]["echo_time"] for c in dataset["cases"] for i in c["images"] if i["modality"] == "T2w"]
    assert max(te) / min(te) > 1.5


def test_render_reproduces_every_repetition(repeated: Path, tmp_path: Path) -> None:
    spec = read_phantom_spec(repeated)
    dataset = json.loads((repeated / "dataset.json").read_text())
    for case in dataset["cases"][:2]:
        rebuilt = PhantomCase(spec, case["id"])
        counts: dict[str, int] = {}
        for image in case["images"]:
            repetition = counts[image["modality"]] = counts.get(image["modality"], 0) + 1
            written = read_image(repeated / image["file"])[0]
            assert rebuilt.protocol(image["modality"], repetition).to_dict() == image["metadata"]
            assert np.array_equal(rebuilt.render(image["modality"], noise=True, repetition=repetition), written), image["file"]
        assert not np.array_equal(rebuilt.render("T2w", repetition=2), rebuilt.render("T2w", repetition=3))
        with pytest.raises(ValueError, match="CT images are taken once per case"):
            rebuilt.render("CT", repetition=2)
        with pytest.raises(ValueError, match="repetition must be a whole number"):
            rebuilt.protocol("T2w", 0)
    # repetition 2 at another TE: the same image stream (gain), only TE differs
    te200 = render_subject(spec, "sub-002", "T2w", {"echo_time": 200.0}, repetition=2)
    own = PhantomCase(spec, 1).protocol("T2w", 2)
    assert np.array_equal(te200, render_subject(spec, 1, "T2w", {**own.to_dict(), "echo_time": 200.0}, repetition=2))
    # the CLI: --repetition
    out = tmp_path / "run2.nii.gz"
    assert render_main(["--dataset", str(repeated), "--case", "2", "--modality", "FLAIR", "--repetition", "2", "--noise",
                        "-o", str(out)]) == 0
    assert np.array_equal(read_image(out)[0], read_image(repeated / "sub-002/sub-002_run-2_FLAIR.nii.gz")[0])
    assert render_main(["--dataset", str(repeated), "--case", "2", "--modality", "CT", "--repetition", "2",
                        "-o", str(tmp_path / "ct.nii.gz")]) == 2


def test_identical_repeated_protocols_are_redrawn_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A range set that fixes every T2w parameter cannot give a second T2w protocol: a clear error."""
    spin_echo = SequenceRanges("spin echo", 1.0, (3000.0, 3000.0), (90.0, 90.0), (90.0, 90.0))
    monkeypatch.setitem(PROTOCOL_RANGES, "fixed", ProtocolRangeSet("fixed", "", {"T1w": WIDE.mri["T1w"], "T2w": (spin_echo,)}))
    case = PhantomCase(PhantomSpec(3, (16, 16, 16), (12.0, 12.0, 12.0), ("T1w", "T2w"), "fixed", protocols_per_modality=2), 0)
    assert case.protocol("T2w").echo_time == 90.0
    with pytest.raises(ValueError, match="T2w: protocol ranges fixed gave no protocol for repetition 2"):
        case.protocol("T2w", 2)
    assert case.protocol("T1w", 2) != case.protocol("T1w")


def test_dataset_json_takes_a_repeated_modality_only_with_other_metadata(repeated: Path, tmp_path: Path) -> None:
    description = load_dataset_description(repeated)
    assert description.cases[0].modalities.count("T2w") == 3
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in repeated.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(repeated)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(repeated)).write_bytes(path.read_bytes())
    data = json.loads((copy / "dataset.json").read_text())
    images = data["cases"][0]["images"]
    images[4]["metadata"] = dict(images[3]["metadata"])  # run-2 T2w claims run-1's protocol
    (copy / "dataset.json").write_text(json.dumps(data))
    problems = [str(p) for p in verify_dataset_integrity(copy)]
    assert len(problems) == 1
    assert "sub-001_run-2_T2w.nii.gz" in problems[0] and "same metadata (prompt) as sub-001/sub-001_T2w.nii.gz" in problems[0]


def test_pair_sampler_pairs_one_modality_at_two_protocols_never_an_image_with_itself() -> None:
    modalities = {"a": ("T1w", "T2w", "T2w", "T2w"), "b": ("T1w", "T2w"), "c": ("T2w", "T2w")}
    prompts = {"a": ("t1", "te40", "te200", "te40"), "b": ("t1", "te90"), "c": ("te70", "te70")}
    sampler = PairSampler(modalities, seed=0, case_prompts=prompts)
    draws = [sampler.sample() for _ in range(800)]
    assert all(d.source_channel != d.target_channel for d in draws)
    assert all(prompts[d.case_id][d.source_channel] != prompts[d.case_id][d.target_channel] for d in draws)
    same = {(d.case_id, d.source_channel, d.target_channel) for d in draws if d.task == "T2w->T2w"}
    assert same == {("a", 1, 2), ("a", 2, 1), ("a", 2, 3), ("a", 3, 2)}  # TE 40 <-> TE 200; never 40 -> 40
    assert "c" not in sampler.case_ids  # two images with one prompt teach nothing
    assert ("T2w", "T2w") in sampler.tasks()
    # the task filter keeps its meaning: T1w->T2w draws no T2w->T2w, and T2w->T2w is a task of its own
    filtered = PairSampler(modalities, parse_task_filter("T1w->T2w"), seed=0, case_prompts=prompts)
    assert {filtered.sample().task for _ in range(200)} == {"T1w->T2w"}
    only_same = PairSampler(modalities, parse_task_filter("T2w->T2w"), seed=0, case_prompts=prompts)
    assert {(d.case_id, d.task) for d in (only_same.sample() for _ in range(100))} == {("a", "T2w->T2w")}
    # without prompts the sampler cannot tell the images apart: other modalities only
    assert all(d.source_modality != d.target_modality for d in (PairSampler(modalities, seed=0).sample() for _ in range(200)))
    # one image per modality: the same draws with and without prompts (existing runs are unchanged)
    plain = {"x": ("T1w", "CT", "FDG-PET"), "y": ("T1w", "CT")}
    with_prompts = PairSampler(plain, seed=4, case_prompts={"x": ("p", "q", "r"), "y": ("p", "q")})
    without = PairSampler(plain, seed=4)
    assert [with_prompts.sample() for _ in range(50)] == [without.sample() for _ in range(50)]


def test_plan_preprocess_and_train_on_repeated_protocols(unisyn_dirs: dict[str, Path], one_torch_thread: None) -> None:
    """unisyn_phantom --protocols_per_modality 3 -> plan and preprocess -> NeuroCLIP and GFM one step each."""
    assert phantom_main(["-d", "31", "--cases", "4", "--seed", "2", "--shape", "24", "24", "24", "--voxel_size", "8", "8",
                         "8", "--modalities", *MR3, "--protocols_per_modality", "2", "--protocol_ranges", "wide",
                         "--complete", "--skull_strip"]) == 0
    assert verify_dataset_integrity(unisyn_dirs["raw"] / "Dataset031_Phantom") == []
    plans = api.plan_and_preprocess(31, planner="cpu", num_processes=1, progress=False, configurations=("2.5d",))
    pre = unisyn_dirs["preprocessed"] / "Dataset031_Phantom"
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert fingerprint["modalities"]["T2w"]["count"] == 4 and sum(fingerprint["metadata_classes"].values()) == 24
    raw = json.loads((unisyn_dirs["raw"] / "Dataset031_Phantom" / "dataset.json").read_text())
    te = [i["metadata"]["echo_time"] for c in raw["cases"] for i in c["images"] if i["modality"] == "T2w"]
    assert len(te) == 8 and fingerprint["modalities"]["T2w"]["typical_metadata"]["echo_time"] == float(np.median(te))
    cases = CaseCollection(pre / plans.configuration("2.5d").data_identifier, [f"sub-{i:03d}" for i in range(1, 5)])
    assert cases.case_modalities()["sub-001"] == ("T1w", "T1w", "T2w", "T2w", "FLAIR", "FLAIR")
    common = ["--device", "cpu", "--num_workers", "0", "--epochs", "1", "--iterations_per_epoch", "1",
              "--validation_iterations", "1"]
    assert train_main(["31", "neuroclip", *common]) == 0
    assert train_main(["31", "gfm", "0", *common, "--batch_size", "2", "--max_validation_cases", "1",
                       "--validation_figures", "1"]) == 0
    fold = next((unisyn_dirs["results"] / "Dataset031_Phantom").glob("GFMTrainer__*/fold_0"))
    trainer = json.loads((fold.parent / "trainer.json").read_text())
    assert {"T2w->T2w", "T1w->FLAIR"} <= set(trainer["tasks"])
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    same = summary["tasks"]["T2w->T2w"]
    assert same["num_cases"] == 1 and same["num_pairs"] == 2  # run-1 -> run-2 and back, never an image with itself
    c = same["cases"][0]["case_id"]
    assert {(r["source"], r["target"]) for r in same["cases"]} == {
        (f"{c}/{c}_T2w.nii.gz", f"{c}/{c}_run-2_T2w.nii.gz"), (f"{c}/{c}_run-2_T2w.nii.gz", f"{c}/{c}_T2w.nii.gz")}
