"""unisyn_v2.phantom."""
