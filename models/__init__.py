"""What sgm_jax knows about checkpoints, as data: the recipes, the bundled organism checkpoint with its card, and
golden outputs of real checkpoints. Installed as the package `sgm_jax.bundled` (pyproject's `package-dir`), so a
wheel carries it; the code that reads it lives in `sgm_jax.weights.recipes` and `sgm_jax.organism.files`."""
