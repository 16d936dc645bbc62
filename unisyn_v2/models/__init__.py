"""Trained models as training writes them and prediction reads them: the model folder (layout, validation,
loading), the trainer registry (which names a folder may use), checkpoint weights, and the Gaussian-blended
sliding window both the trainers' validation and the predictor run. Below both ``training`` and ``inference``."""
