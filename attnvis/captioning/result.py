"""What a captioner returns per image, for every captioner kind."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnvis.metadata import TokenLayout


@dataclass
class ImageCaption:
    """One image's caption and where each generated token looked.

    Attributes:
        token_ids: ``(T,)`` int64, the generated ids after the start token, up
            to and including the end token when one was produced.
        words: ``T`` readable words, one per token.
        sentence: the caption (special tokens removed).
        cross_attention: ``(T, layers, heads, K)`` float32: the weights with
            which generating token ``t`` looked at the ``K`` encoder tokens
            (prefix tokens included), per decoder layer and head.
        tokens: how the ``K`` keys map back to the image (prefix tokens, grid or regions).
        special: ``(T,)`` bool, True for tokens that are not words (end, padding).
        boxes: ``(K, 4)`` xyxy pixel boxes when the keys are detector regions, else None.
    """

    token_ids: np.ndarray
    words: list[str]
    sentence: str
    cross_attention: np.ndarray
    tokens: TokenLayout
    special: np.ndarray
    boxes: np.ndarray | None = None

    def word_indices(self) -> list[int]:
        """The positions ``t`` whose token is a word (figures are written for these)."""
        return [t for t in range(len(self.words)) if not self.special[t] and self.words[t]]
