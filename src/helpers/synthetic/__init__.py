"""Generated data: the sample corpora and the synthetic world with known truth, and its validation."""
