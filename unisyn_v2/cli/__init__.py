"""unisyn_v2.cli."""
