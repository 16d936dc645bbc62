"""Stage-2 data pipeline: cases on disk, (source, target) pair sampling, patches, augmentation, batches."""
