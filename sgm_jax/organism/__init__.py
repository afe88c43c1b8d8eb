"""The bundled model organism: where its files are, and `sgm-jax demo`, the whole method run on it."""
