"""unisyn_v2.experiment_planning."""
