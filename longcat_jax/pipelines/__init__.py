"""LongCat-Video's tasks: the task registry (`tasks`), one module per task (`t2v`, `i2v`, `continuation`,
`long_video`, `refine`) with its options (`options`), the pipeline object (`pipeline`), and what they share: each
stage's BSA (`bsa`), token geometry and buckets, schedule, guidance and the compiled denoising step."""
