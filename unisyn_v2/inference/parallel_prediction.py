"""Predicting many cases in worker processes (``unisyn_predict -npp N``) with bounded memory.

Each worker loads the model once (with the predictor's ``recipe``, a picklable call that loads it from its
model folder, when the predictor came from one; else from a pickled copy of the predictor) and then holds one case at a time (:func:`unisyn_v2.parallel.map_cases`),
so at most N cases are in memory whatever the number of inputs. A worker that dies is reported with
the case it was predicting; cases already written stay written (``--continue_prediction`` resumes).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from unisyn_v2.inference.inputs import DescriptionSpec, InputCase
from unisyn_v2.parallel import map_cases

_WORKER_PREDICTORS: dict[str, Any] = {}  # per worker process: job token -> loaded predictor


@dataclass
class PredictionJob:
    """What a worker needs (picklable): how to get the predictor, the cases and the target."""

    token: str
    recipe: Callable[..., Any] | None  # builds the predictor in the worker: recipe(settings=...)
    predictor: Any  # used when there is no recipe
    settings: Any
    cases: dict[str, InputCase]
    target: DescriptionSpec
    output_folder: Path
    source_image: str | None
    threads: int


def _predictor_of(job: PredictionJob) -> Any:
    predictor = _WORKER_PREDICTORS.get(job.token)
    if predictor is None:
        torch.set_num_threads(job.threads)
        if job.recipe is not None:
            predictor = job.recipe(settings=job.settings)
        else:
            predictor = job.predictor
            predictor.settings = job.settings
        _WORKER_PREDICTORS.clear()
        _WORKER_PREDICTORS[job.token] = predictor
    return predictor


def _predict_one(job: PredictionJob, case_id: str) -> Path:
    return _predictor_of(job).predict_case(job.cases[case_id], job.target, job.output_folder, job.source_image)


def predict_cases_in_workers(predictor: Any, cases: list[InputCase], target: DescriptionSpec, output_folder: Path,
                             source_image: str | Path | None, num_processes: int) -> dict[str, Path]:
    """case id -> written image path, predicted by ``num_processes`` workers (one case in flight each)."""
    recipe = getattr(predictor, "recipe", None)
    workers = max(1, min(num_processes, len(cases)))
    threads = max(1, torch.get_num_threads() // workers) if predictor.device.type == "cpu" else 1
    settings = replace(predictor.settings, progress=False)  # one bar over the cases instead
    job = PredictionJob(uuid.uuid4().hex, recipe, None if recipe is not None else predictor, settings,
                        {case.case_id: case for case in cases}, target, Path(output_folder),
                        None if source_image is None else os.fspath(source_image), threads)
    ids = [case.case_id for case in cases]
    paths = map_cases(_predict_one, job, ids, workers, predictor.settings.progress, "predict")
    return dict(zip(ids, paths))
