"""Sweeps: many intervention settings measured on the same data, to a table and a Pareto front."""
