"""Step 1 of SGM: the sites a model offers, pooled responses captured at them, and the resumable store they fill."""
