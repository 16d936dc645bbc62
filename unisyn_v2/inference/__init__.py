"""unisyn_v2.inference."""
