"""The CLIP BPE tokenizer as Stable Diffusion v1 uses it, built from the vocabulary open_clip ships.

Same byte-pair encoding as SD1.5's `CLIPTokenizer`: `<start>` at position 0, the first word at 1,
`<end>` after the last piece, padded with `<end>` (SD1.5's pad token) to 77 positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer

CONTEXT_LENGTH = 77


class ClipBpeTokenizer:
    """Tokenize prompts to [B, 77] ids and locate a word's BPE pieces."""

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        self.bpe = SimpleTokenizer()
        self.context_length = context_length
        self.bos_id = self.bpe.encoder["<start_of_text>"]
        self.eos_id = self.bpe.encoder["<end_of_text>"]
        self.pad_id = self.eos_id

    def pieces(self, text: str) -> list[int]:
        """BPE ids of `text` without special tokens (lower-cased and cleaned as CLIP does)."""
        return self.bpe.encode(text)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Ids [B, 77]: <start> pieces <end> <end>...; prompts longer than 77 are truncated."""
        rows = []
        for text in texts:
            ids = [self.bos_id, *self.pieces(text)][: self.context_length - 1] + [self.eos_id]
            rows.append(ids + [self.pad_id] * (self.context_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def decode_piece(self, token_id: int) -> str:
        return self.bpe.decoder[token_id]
