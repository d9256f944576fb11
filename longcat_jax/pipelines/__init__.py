"""Sampling for LongCat-Video: schedule, guidance, resolution buckets and the task pipelines built on them."""
