"""unisyn_v2.evaluation."""
