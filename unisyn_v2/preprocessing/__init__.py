"""unisyn_v2.preprocessing."""
