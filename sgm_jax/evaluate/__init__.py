"""Evaluation: judges, metrics (harmful rate, fluency, multiple-choice reasoning) and reports."""
