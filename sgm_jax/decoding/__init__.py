"""Running a model over many prompts: length-sorted batches, length checks, KV-cached generation and plain answers."""
