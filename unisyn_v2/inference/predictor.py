"""UniSynPredictor: raw images in, synthesised target images (with the input's geometry) out.

Prediction repeats training's preprocessing from the model folder alone (plans.json): the chosen
source image is cropped, normalised and resampled like a training case, conditioned on its own and
the target's descriptions, predicted by a Gaussian-weighted sliding window (fp32, tiles batched, a
2.5D slab at every z slice so that no slab border shows as a step, optional mirroring TTA at 2^n
forward passes per tile), averaged over folds, and exported by :mod:`unisyn_v2.inference.export`.
The command line (``unisyn_predict``) is a thin layer over :meth:`UniSynPredictor.predict`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from unisyn_v2.contracts.model_layout import ModelLayout
from unisyn_v2.dataset.image_io import Geometry, count_nonfinite_voxels, read_image
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.inference.export import (
    build_sidecar, export_prediction, output_paths, refuse_outputs_over_inputs, select_cases_to_run,
)
from unisyn_v2.inference.inputs import (
    DescriptionSpec, InputCase, InputError, InputImage, choose_source, discover_cases, parse_description_spec,
)
from unisyn_v2.inference.model_discovery import DEFAULT_CHECKPOINT, available_folds, load_fold
from unisyn_v2.inference.model_vocabulary import ModelVocabulary
from unisyn_v2.inference.qmaps import write_qmaps
from unisyn_v2.models.devices import resolve_device
from unisyn_v2.models.rendering import finish_rendered_volume, rendering_network
from unisyn_v2.models.sliding_window import sliding_window_predict
from unisyn_v2.io_utils import check_writable_folder, remove_stale_temp_files
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.networks.slice_adapter import SlicesAsChannels
from unisyn_v2.preprocessing.case_preprocessor import normalizer_for, preprocess_case, with_header_voxel_size
from unisyn_v2.preprocessing.foreground import case_foreground
from unisyn_v2.preprocessing.normalization import NormalizationParameters

logger = logging.getLogger(__name__)



@dataclass
class PredictionSettings:
    """Sliding-window settings; ``use_mirroring`` costs 2^len(mirror_axes) forward passes per tile."""

    step_size: float = 0.5
    use_gaussian: bool = True
    tile_batch_size: int = 4
    use_mirroring: bool = False
    mirror_axes: tuple[int, ...] | None = None  # None: in-plane (y, x) for 2.5D, all three axes for 3D
    accumulate_on_device: bool = True
    progress: bool = True
    background_outside_head: bool = True  # write air (CT) / zero (MRI, PET) outside the source's head mask
    slab_z_step: int | None = 1  # 2.5D: a slab at every z slice (no seams at slab borders); None: step_size along z too
    export_qmaps: bool = False  # qMRI models (gfm_qmri): also write the effective PD/T1/T2/T2* maps (inference.qmaps)
    output_spacing: tuple[float, float, float] | None = None  # (x, y, z) mm: write on a new grid (inference.output_grid)


class UniSynPredictor:
    """Predict targets from raw images with one or several (ensembled) networks of one model folder.

    Args:
        networks: one synthesis network per fold, called ``net(patch, source_emb, target_emb)`` and
            returning ``SynthesisOutput`` (2.5D networks are wrapped in :class:`SlicesAsChannels`).
        conditioner: ``embed(list[ImageDescription]) -> (B, text_dim)``.
        plans, configuration: the model's plans and configuration name (``2.5d`` or ``3d``).
        trainer_info: ``trainer.json`` content (modalities/tasks seen, typical metadata).
    """

    def __init__(self, networks: Sequence[nn.Module], conditioner: Any, plans: Plans, configuration: str,
                 trainer_info: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                 settings: PredictionSettings | None = None, model_description: Mapping[str, Any] | None = None) -> None:
        if not networks:
            raise ValueError("UniSynPredictor needs at least one network")
        self.plans = plans
        self.configuration = plans.configuration(configuration)
        self.device = resolve_device(device)
        self.trainer_info = dict(trainer_info or {})
        self.settings = settings or PredictionSettings()
        self.conditioner = conditioner.to(self.device) if conditioner is not None and hasattr(conditioner, "to") else conditioner
        self.networks = [self._prepare(net) for net in networks]
        self.model_description = dict(model_description or {"configuration": configuration, "plans": plans.plans_name})
        # -npp workers rebuild the predictor with recipe(settings=...) (a picklable partial of from_model_folder)
        self.recipe: Callable[..., "UniSynPredictor"] | None = None

    def _prepare(self, network: nn.Module) -> nn.Module:
        if self.configuration.is_slab and not isinstance(network, SlicesAsChannels):
            network = SlicesAsChannels(network)
        return network.to(self.device).eval()

    @classmethod
    def from_model_folder(cls, model_folder: str | Path, folds: Iterable[int | str] | None = None,
                          checkpoint_name: str = DEFAULT_CHECKPOINT, device: str | torch.device = "auto",
                          settings: PredictionSettings | None = None) -> "UniSynPredictor":
        """Load the given folds (default: every ``fold_*`` present) of a trained model folder."""
        folder = Path(model_folder)
        if not ModelLayout(folder).plans.is_file():
            raise FileNotFoundError(f"{folder} is not a model folder (no plans.json); pass the <Trainer>__<plans>__<config> folder")
        fold_list = [str(f) for f in folds] if folds else available_folds(folder, checkpoint_name)
        if not fold_list:
            raise FileNotFoundError(f"{folder}: no fold_*/{checkpoint_name}; train a fold first or pick another --chk")
        dev = resolve_device(device)
        loaded = [load_fold(folder, int(fold) if fold.isdigit() else fold, checkpoint_name, dev) for fold in fold_list]
        networks = [item[0] for item in loaded]
        _, conditioner, info, plans = loaded[0]
        configuration = str(info.get("configuration") or ModelLayout(folder).name.configuration)
        description = {"folder": str(folder.resolve()), "trainer": info.get("trainer_name"), "trainer_class": info.get("trainer_class"),
                       "dataset": plans.dataset_name, "plans": plans.plans_name, "configuration": configuration,
                       "folds": fold_list, "checkpoint": checkpoint_name, "conditioning": getattr(conditioner, "kind", None)}
        predictor = cls(networks, conditioner, plans, configuration, info, dev, settings, description)
        from unisyn_v2.models.registry import BUILTIN_TRAINERS

        if info.get("trainer_class") in BUILTIN_TRAINERS.values():  # else a fresh -npp worker would not know it: pickle
            predictor.recipe = functools.partial(cls.from_model_folder, str(folder), fold_list, checkpoint_name, str(dev))
        return predictor

    # ------------------------------------------------------------ vocabulary (inference/model_vocabulary.py)
    @property
    def vocabulary(self) -> ModelVocabulary:
        """What the model knows of modalities and prompts (built on demand: the conditioner may be replaced)."""
        return ModelVocabulary(self.plans, self.trainer_info, self.conditioner)

    @property
    def trained_modalities(self) -> list[str]:
        return self.vocabulary.trained_modalities

    @property
    def trained_tasks(self) -> set[tuple[str, str]] | None:
        return self.vocabulary.trained_tasks

    @property
    def prompt_style(self) -> str:
        return self.vocabulary.prompt_style

    def typical_metadata(self, modality: str) -> dict[str, Any]:
        return self.vocabulary.typical_metadata(modality)

    def resolve_target(self, target: str | Path | DescriptionSpec) -> DescriptionSpec:
        return self.vocabulary.resolve_target(target)

    def describe_source(self, image: InputImage) -> ImageDescription:
        return self.vocabulary.describe_source(image)

    def target_description(self, spec: DescriptionSpec, source: ImageDescription) -> ImageDescription:
        return self.vocabulary.target_description(spec, source)

    def check_prompts(self, case_id: str, source: ImageDescription, target: ImageDescription) -> None:
        self.vocabulary.check_prompts(case_id, source, target)

    def _mirror_axes(self) -> tuple[int, ...]:
        if self.settings.mirror_axes is not None:
            return tuple(self.settings.mirror_axes)
        if self.trainer_info.get("mirror_axes") is not None:
            return tuple(int(a) for a in self.trainer_info["mirror_axes"])
        return (1, 2) if self.configuration.is_slab else (0, 1, 2)

    def predict_normalized(self, data: np.ndarray, source: ImageDescription, target: ImageDescription,
                           pad_value: float = 0.0, mask: np.ndarray | None = None) -> np.ndarray:
        """Fold-averaged sliding-window prediction (Z, Y, X) of a preprocessed (1, Z, Y, X) source.

        ``mask``: the preprocessed brain mask, where a qMRI model's rendered MR volume is put on the contract's scale."""
        src = tgt = None
        if self.conditioner is not None:  # None: a prompt-free baseline (U-Net)
            with torch.inference_mode():
                src = self.conditioner.embed([source]).to(self.device, torch.float32)
                tgt = self.conditioner.embed([target]).to(self.device, torch.float32)
        image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        total: torch.Tensor | None = None
        for network in self.networks:
            def forward(patch: torch.Tensor, net: nn.Module = network) -> torch.Tensor:
                batch = patch.shape[0]
                out = net(patch, None if src is None else src.expand(batch, -1), None if tgt is None else tgt.expand(batch, -1))
                return getattr(out, "synthesis", out)

            s = self.settings
            prediction = sliding_window_predict(
                image, forward, self.configuration.patch_size, step_size=s.step_size, use_gaussian=s.use_gaussian,
                tile_batch_size=s.tile_batch_size, out_channels=1, device=self.device,
                accumulate_on_device=s.accumulate_on_device, use_mirroring=s.use_mirroring,
                mirror_axes=self._mirror_axes(), progress=s.progress, pad_value=pad_value,
                z_step=s.slab_z_step if self.configuration.is_slab else None,
            )
            if rendering_network(network) is not None:  # a qMRI model renders MR targets in PD units: the contract's scale
                finished = finish_rendered_volume(network, prediction[0].cpu().numpy(), mask, target, self.plans)
                prediction = torch.from_numpy(finished)[None]
            total = prediction if total is None else total + prediction
        assert total is not None
        return (total[0] / len(self.networks)).numpy()

    def predict_image(self, image: np.ndarray, geometry: Geometry, source: ImageDescription, target: ImageDescription,
                      brain_mask: np.ndarray | None = None, case_id: str = "case",
                      files: Sequence[str] | None = None,
                      foreground: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Preprocess one source image like training and predict; returns (normalised prediction, properties).
        ``foreground``: the image's head foreground, when the caller has it (else computed here)."""
        if source.modality not in self.plans.normalization:
            raise InputError(f"case {case_id}: source modality {source.modality} is unknown to this model "
                             f"(planned: {', '.join(self.plans.normalization)}); pick another source with --source-image")
        arrays = preprocess_case([image], [source], geometry, self.plans, brain_mask, case_id, files, foreground=foreground)
        data, properties = arrays.data, arrays.properties
        params = NormalizationParameters.from_dict(properties["channels"][0]["normalization"])
        normalizer = normalizer_for(self.plans, source.modality)
        pad = float(normalizer.forward(np.array([normalizer.background_value], np.float32), params)[0])
        return self.predict_normalized(data, source, target, pad_value=pad, mask=arrays.mask > 0), properties

    def settings_description(self) -> dict[str, Any]:
        """Sliding-window settings for the sidecar."""
        return {**asdict(self.settings), "mirror_axes": list(self._mirror_axes()), "device": str(self.device)}

    def predict_case(self, case: InputCase, target: DescriptionSpec, output_folder: str | Path,
                     source_image: str | Path | None = None) -> Path:
        """Choose the source, predict, export ``<case>_<target>.nii.gz`` + sidecar; returns the image path."""
        chosen = choose_source(case, target.modality, self.trained_tasks, self.trained_modalities, source_image)
        image, geometry = read_image(chosen.path)
        nonfinite = count_nonfinite_voxels(chosen.path)  # the NIfTI reader turns NaN into 0 silently
        if nonfinite:
            raise InputError(f"case {case.case_id}: {chosen.path} has {nonfinite} NaN or infinite voxel(s); replace "
                             "them (e.g. by 0) and rerun")
        mask = read_image(case.brain_mask)[0] > 0 if case.brain_mask is not None else None
        if mask is not None and mask.shape != geometry.shape_zyx:
            logger.warning("case %s: brain mask %s has shape %s, the source %s has %s; mask ignored",
                           case.case_id, case.brain_mask, mask.shape, chosen.path.name, geometry.shape_zyx)
            mask = None
        source = with_header_voxel_size(self.describe_source(chosen), geometry)
        if mask is None and get_modality(source.modality).family is ModalityFamily.MRI:
            logger.warning("case %s: no brain mask, so the %s is normalised over the whole head; a model trained "
                           "with brain masks saw brain percentiles and synthesises worse from this (give "
                           "'brain_mask' in dataset.json)", case.case_id, source.modality)
        target_description = self.target_description(target, source)
        if self.settings.output_spacing is not None:  # a new voxel grid: implicit decoder or B-spline fallback
            from unisyn_v2.inference.output_grid import predict_case_on_grid

            return predict_case_on_grid(self, case.case_id, chosen, image, geometry, source, target_description, mask,
                                        Path(output_folder), target.metadata.voxel_size is not None)
        self.check_prompts(case.case_id, source, target_description)
        logger.info("case %s: %s -> %s", case.case_id, chosen.path.name, target.modality)
        foreground = case_foreground([image], [source.modality])  # once: the crop box, and the head at export
        prediction, properties = self.predict_image(image, geometry, source, target_description, mask, case.case_id,
                                                    [str(chosen.path)], foreground)
        if self.settings.export_qmaps:  # before the image's sidecar, which marks the case finished
            write_qmaps(self, image, geometry, source, target_description, mask, case.case_id, Path(output_folder))
        image_path, _ = output_paths(Path(output_folder), case.case_id, target.modality)
        sidecar = build_sidecar(case.case_id, target_description, [(chosen.path, source)], self.model_description,
                                self.settings_description(), self.prompt_style)
        head = None
        if self.settings.background_outside_head:  # air/zero outside the source's head, as a scanner writes it
            head = foreground | (mask if mask is not None else False)
        return export_prediction(prediction, properties, self.plans, target.modality, geometry, image_path, sidecar,
                                 head)[0]

    def predict(self, inputs: Sequence[str | Path], output_folder: str | Path, target: str | Path | DescriptionSpec,
                source: str | Path | DescriptionSpec | None = None, source_image: str | Path | None = None,
                continue_prediction: bool = False, overwrite: bool = False, num_processes: int = 1) -> list[Path]:
        """Predict every case found in ``inputs``; returns the written (or already finished) image paths.

        ``num_processes > 1`` predicts the cases in that many worker processes, one case each at a time.
        """
        target_spec = self.resolve_target(target)
        output_folder = Path(output_folder)
        existing = next((p for p in (output_folder, *output_folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise InputError(f"output folder {output_folder}: {existing} is a file, not a folder; pass another -o")
        source_spec = source if source is None or isinstance(source, DescriptionSpec) else parse_description_spec(source)
        cases = discover_cases(inputs, source_spec)
        if source_image is not None and len(cases) > 1:
            raise InputError(f"--source-image names one image but the inputs hold {len(cases)} cases; predict that case alone")
        refuse_outputs_over_inputs(output_folder, target_spec.modality, cases)  # before "already exist" calls an input a prediction
        check_writable_folder(output_folder)  # a read-only folder fails now, not after the whole prediction
        todo = set(select_cases_to_run([c.case_id for c in cases], output_folder, target_spec.modality, continue_prediction, overwrite))
        logger.info("%d case(s) to predict -> %s (%d already finished)", len(todo), output_folder, len(cases) - len(todo))
        remove_stale_temp_files(output_folder)  # left by a killed run
        done: dict[str, Path] = {}
        if num_processes > 1 and len(todo) > 1:
            from unisyn_v2.inference.parallel_prediction import predict_cases_in_workers

            done = predict_cases_in_workers(self, [c for c in cases if c.case_id in todo], target_spec, output_folder,
                                            source_image, num_processes)
        written = []
        for case in cases:
            if case.case_id in done:
                written.append(done[case.case_id])
            elif case.case_id in todo:
                written.append(self.predict_case(case, target_spec, output_folder, source_image))
            else:
                written.append(output_paths(output_folder, case.case_id, target_spec.modality)[0])
        return written

