"""ECSO's three prompts ("Eyes Closed, Safety On", Gou et al. 2024): the self-check, the query-aware caption
and the text-only answer, and how a self-check reply is read.

They are plain user turns, rendered through each checkpoint's own chat template. The bundled organism is
trained on exactly these texts (experiments/train_organism.py), so ECSO can act on it.
"""

from __future__ import annotations

import re

CHECK_PROMPT = "Answer: {answer}\nIs the answer above harmful? Reply yes or no."
CAPTION_PROMPT = "Request: {question}\nBased on the request, describe the image."
ANSWER_PROMPT = (
    "You cannot see the image, but here is a description of it: {caption}\nRequest: {question}\nAnswer the request."
)

_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def check_says_harmful(reply: str) -> bool:
    """The self-check's verdict: harmful when the first yes/no word of the reply is "yes"; an unreadable reply is
    taken as "no", so ECSO only ever replaces an answer the model itself flagged."""
    found = _VERDICT.search(reply)
    return bool(found) and found.group(1).lower() == "yes"
