"""Token budgets of FLUX's two text encoders: CLIP reads 77 tokens, T5 reads 512."""

from __future__ import annotations

import math
import re
import threading
from typing import Any

CLIP_MAX_TOKENS = 77
T5_MAX_TOKENS = 512

_PIECES = re.compile(r"\w+|[^\w\s]")

# A fast tokenizer keeps its padding and truncation settings on the tokenizer object and sets them on every
# call (FLUX's prompt encoding: max_length, then longest; token counting: neither), so a call in another thread
# may tokenize with those settings. Every use of the tokenizers a pipeline shares holds this lock.
TOKENIZER_LOCK = threading.RLock()


def estimate_tokens(text: str) -> int:
    """A conservative estimate for BPE/sentencepiece tokenizers: 1.3 tokens per word or punctuation mark,
    plus 2 special tokens."""
    return math.ceil(1.3 * len(_PIECES.findall(text))) + 2


class TokenCounter:
    """Counts the tokens a text encoder sees for a text, special tokens included.

    With a tokenizer (e.g. ``pipe.tokenizer`` or ``pipe.tokenizer_2``) the count is measured; without one it is
    :func:`estimate_tokens`.
    """

    def __init__(self, tokenizer: Any | None = None):
        self.tokenizer = tokenizer

    @property
    def measured(self) -> bool:
        return self.tokenizer is not None

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            return estimate_tokens(text)
        with TOKENIZER_LOCK:
            ids = self.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return len(ids)
