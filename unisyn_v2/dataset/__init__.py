"""Raw datasets: the dataset.json schema, image IO with geometry, id resolution and the integrity check."""
