"""The subject word of a prompt -> its columns in the 77-token CLIP attention map (docs/paper.md §3, B4).

`clip_aligned` (default): every BPE piece of the word, offset by <start> at column 0; the scores of
the pieces are summed. "Streetlights illuminating" -> street (1), lights (2).
`word_index_raw` (reference code): the word's index among the prompt's words used directly as the
column, so "Deer roaming" -> column 0 = <start>. The reference code took spaCy's token index of
every noun; without spaCy, the manifest's subject word and a whitespace split stand in for it
(identical on the 34 protocol prompts, whose words are plain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (open_clip's tokenizer imports timm: about a second)
    from bench.sd.tokenizer import ClipBpeTokenizer

WORD_END = "</w>"


@dataclass(frozen=True)
class SubjectTokens:
    """The columns of a subject word and the BPE pieces there (for the sample row)."""

    word: str
    positions: tuple[int, ...]
    pieces: tuple[str, ...]


def subject_tokens(
    tokenizer: ClipBpeTokenizer, prompt: str, subject: str, index_mode: str = "clip_aligned"
) -> SubjectTokens:
    """Columns of `subject` in `prompt`'s CLIP token sequence; an error naming the prompt if it is absent.

    `index_mode` is one of method.config.INDEX_MODES (validated by SubjectConfig, not here).
    """
    full = [tokenizer.bos_id, *tokenizer.pieces(prompt)]
    ids = full[: tokenizer.context_length - 1]
    if index_mode == "word_index_raw":
        words = prompt.split()
        if subject not in words:
            raise ValueError(f"subject word {subject!r} is not a word of prompt {prompt!r}; fix the dataset manifest.")
        column = words.index(subject)
        if column >= len(ids):
            raise ValueError(outside_window(tokenizer, prompt, subject, column))
        return SubjectTokens(subject, (column,), (tokenizer.decode_piece(ids[column]),))
    word = tokenizer.pieces(subject)
    if not word:
        raise ValueError(f"subject word {subject!r} of prompt {prompt!r} has no CLIP pieces; fix the dataset manifest.")
    positions = [p for start in word_starts(tokenizer, ids, word) for p in range(start, start + len(word))]
    if not positions and word_starts(tokenizer, full, word):
        raise ValueError(outside_window(tokenizer, prompt, subject, word_starts(tokenizer, full, word)[0]))
    if not positions:
        prompt_pieces = [tokenizer.decode_piece(i) for i in ids[1:]]
        word_pieces = [tokenizer.decode_piece(i) for i in word]
        raise ValueError(
            f"subject word {subject!r} does not occur in prompt {prompt!r} (CLIP pieces {prompt_pieces}, "
            f"word pieces {word_pieces}); fix the subject in the dataset manifest (conf/protocol/)."
        )
    return SubjectTokens(subject, tuple(positions), tuple(tokenizer.decode_piece(ids[p]) for p in positions))


def outside_window(tokenizer: ClipBpeTokenizer, prompt: str, subject: str, column: int) -> str:
    """The message for a subject word that CLIP's text window truncates away."""
    return (
        f"subject word {subject!r} of prompt {prompt!r} starts at CLIP token column {column}, outside the "
        f"{tokenizer.context_length}-token text window (<start>, {tokenizer.context_length - 2} pieces, <end>): "
        "the text encoder never sees it, so it has no attention column. Fix: shorten the prompt or move the "
        "subject earlier (the dataset manifest, conf/protocol/)."
    )


def word_starts(tokenizer: ClipBpeTokenizer, ids: list[int], word: list[int]) -> list[int]:
    """Columns where the piece sequence `word` starts a whole word of `ids` (after <start> or a word end)."""
    starts = []
    for start in range(1, len(ids) - len(word) + 1):
        at_word_start = start == 1 or tokenizer.decode_piece(ids[start - 1]).endswith(WORD_END)
        if at_word_start and ids[start : start + len(word)] == word:
            starts.append(start)
    return starts
