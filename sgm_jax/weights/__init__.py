"""Weights in and out: loading HF checkpoints, converting their tensors, folding gates into exported weights,
orbax checkpoints, sharding over a mesh, and the recipes of real checkpoints."""
