"""What callers pass to a captioner: a caption cut at ``max_new_tokens`` is cut in its sentence too;
lengths and beam sizes out of range are refused in one line, before any image is read."""

from __future__ import annotations

import pytest

from attnvis.errors import InputError
from attnvis.models import sample_image_path


@pytest.fixture(scope="module")
def captioner():
    from attnvis.captioning.load import load_captioner

    return load_captioner("default-captioner", backend="torch", device="cpu")


def test_max_new_tokens_cuts_the_sentence_with_the_words(captioner):
    (full,) = captioner.caption([str(sample_image_path())])
    assert len(full.words) > 3, full.words  # the cut below removes something
    (cut,) = captioner.caption([str(sample_image_path())], max_new_tokens=3)
    assert cut.words == full.words[:3] and cut.token_ids.tolist() == full.token_ids[:3].tolist()
    assert cut.sentence == " ".join(w for w, s in zip(cut.words, cut.special) if not s)
    assert full.sentence.startswith(cut.sentence) and cut.sentence != full.sentence


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_max_new_tokens_must_be_a_positive_integer(captioner, n):
    with pytest.raises(InputError, match="max_new_tokens must be a positive integer") as err:
        captioner.caption([str(sample_image_path())], max_new_tokens=n)
    assert "\n" not in str(err.value)


def test_beam_size_past_the_vocabulary_is_refused(captioner):
    vocab = captioner.vocab_size
    assert vocab == len(captioner.captioner.vocab) + 1  # the words and the end token
    with pytest.raises(InputError, match=f"--beam-size {vocab + 1} is larger than the captioner's vocabulary "
                                         f"\\({vocab} tokens\\)"):
        captioner.caption([str(sample_image_path())], beam_size=vocab + 1)
