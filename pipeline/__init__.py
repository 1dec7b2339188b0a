"""Ray jobs that label clips and write WebDataset shards."""
