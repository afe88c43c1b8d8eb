"""Evaluation: judges, metrics (harmful rate, fluency, multiple-choice reasoning) and reports.

`evaluate(model, processor, samples, judge=..., out_dir=..., intervention=...)` is the notebook entry point of
what `sgm-jax evaluate` does.
"""

from sgm_jax.evaluate.runner import EvalOptions, evaluate

__all__ = ["EvalOptions", "evaluate"]
