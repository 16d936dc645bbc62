"""unisyn_v2.training."""
