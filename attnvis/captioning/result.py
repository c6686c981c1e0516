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


@dataclass
class ImageTile:
    """Where a run of image tokens lies on the image.

    Attributes:
        grid: ``(h, w)`` tokens, row-major, in the image-token order.
        box: ``(x1, y1, x2, y2)`` in the original image's pixels that the grid covers.
        start: the index of the tile's first grid token among the image tokens.
        thumbnail: True for a global view of the whole image beside tiles (Idefics3/SmolVLM).
    """

    grid: tuple[int, int]
    box: tuple[float, float, float, float]
    start: int
    thumbnail: bool = False


@dataclass
class VLMCaption:
    """A vision-language model's answer about one image and where each generated token looked.

    Attributes:
        token_ids: ``(T,)`` int64 generated ids, up to and including the end token when one was produced.
        words: ``T`` readable words.
        sentence: the answer (special tokens removed).
        image_attention: ``(T, layers, heads, I)`` float32: token ``t``'s attention on the ``I`` image tokens.
        image_grid: the token grid ``(h, w)`` of each tile, in image-token order.
        text_attention: ``(T, layers, heads, K_text)`` float32: on the prompt's text tokens, then on the
            generated tokens before ``t`` (zero for the later ones).
        tiles: where each grid lies on the image (:class:`ImageTile`).
        special: ``(T,)`` bool, True for tokens that are not words.
    """

    token_ids: np.ndarray
    words: list[str]
    sentence: str
    image_attention: np.ndarray
    image_grid: list[tuple[int, int]]
    text_attention: np.ndarray
    tiles: list[ImageTile]
    special: np.ndarray

    @property
    def cross_attention(self) -> np.ndarray:
        """The image rows under the name the captioners' figures read."""
        return self.image_attention

    def word_indices(self) -> list[int]:
        """The positions ``t`` whose token is a word (figures are written for these)."""
        return [t for t in range(len(self.words)) if not self.special[t] and self.words[t]]
