"""`python -m sgm_jax.cli`: the `sgm-jax` command, for a shell whose PATH lacks pip's script folder."""

from sgm_jax.cli import main

main()
