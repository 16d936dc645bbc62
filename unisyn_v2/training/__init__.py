"""unisyn_v2.training: trainer base + variants, registry, data pipeline, losses, checkpoints, logging.

Entry points: ``run_training.run_training`` (what ``unisyn_train`` calls), ``registry.resolve_trainer_class``,
``trainer_base.TrainerBase`` (subclass it, override hooks), ``model_folder.load_trained_model`` (prediction).
Nothing is imported here, so importing a submodule stays cheap.
"""
