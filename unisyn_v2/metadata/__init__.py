"""Modality vocabulary, typed acquisition metadata, structured text prompts and BIDS sidecars."""
