"""Subject word -> CLIP columns, on all 34 protocol prompts (docs/paper.md §3, B4)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bench.config import CONF_DIR, ConfigError
from bench.sd.tokenizer import ClipBpeTokenizer
from method.sampler import GradSAM
from method.tokens import subject_tokens

PROTOCOL = OmegaConf.load(CONF_DIR / "protocol" / "places34.yaml")
PROMPTS = [(p.text, p.subject) for sub in PROTOCOL.subcategories for p in sub.prompts]


@pytest.fixture(scope="module")
def tokenizer() -> ClipBpeTokenizer:
    return ClipBpeTokenizer()


def test_protocol_has_34_prompts():
    assert len(PROMPTS) == 34


@pytest.mark.parametrize(("prompt", "subject"), PROMPTS, ids=[p for p, _ in PROMPTS])
def test_clip_aligned_columns_spell_the_subject(tokenizer, prompt, subject):
    tokens = subject_tokens(tokenizer, prompt, subject)
    ids = tokenizer([prompt])[0].tolist()
    spelled = "".join(tokenizer.decode_piece(ids[p]) for p in tokens.positions).replace("</w>", "")
    assert spelled == subject.lower()
    # The columns are consecutive, start after <start> and the words before the subject.
    words_before = prompt.split().index(subject)
    first = 1 + sum(len(tokenizer.pieces(w)) for w in prompt.split()[:words_before])
    assert tokens.positions == tuple(range(first, first + len(tokenizer.pieces(subject))))


@pytest.mark.parametrize(
    ("prompt", "subject", "positions", "pieces"),
    [
        ("Streetlights illuminating", "Streetlights", (1, 2), ("street", "lights</w>")),
        ("Picnickers relaxing", "Picnickers", (1, 2, 3), ("pic", "nick", "ers</w>")),
        ("Cacti blooming", "Cacti", (1, 2), ("cac", "ti</w>")),
        ("Serene view", "view", (2,), ("view</w>",)),
        ("Deer roaming", "Deer", (1,), ("deer</w>",)),
    ],
)
def test_multi_piece_words_map_to_all_pieces(tokenizer, prompt, subject, positions, pieces):
    tokens = subject_tokens(tokenizer, prompt, subject)
    assert tokens.positions == positions
    assert tokens.pieces == pieces


@pytest.mark.parametrize(("prompt", "subject"), PROMPTS, ids=[p for p, _ in PROMPTS])
def test_word_index_raw_reproduces_the_off_by_one(tokenizer, prompt, subject):
    tokens = subject_tokens(tokenizer, prompt, subject, "word_index_raw")
    expected = prompt.split().index(subject)  # spaCy index used as the CLIP column
    assert tokens.positions == (expected,)
    if expected == 0:
        assert tokens.pieces == ("<start_of_text>",)  # the attention sink, not the noun


def test_serene_view_raw_index_points_at_serene(tokenizer):
    assert subject_tokens(tokenizer, "Serene view", "view", "word_index_raw").pieces == ("serene</w>",)


def test_subject_must_be_a_whole_word(tokenizer):
    # "light" is a piece-prefix of nothing here, "lights" is not a whole word of the prompt.
    with pytest.raises(ValueError, match="Streetlights illuminating"):
        subject_tokens(tokenizer, "Streetlights illuminating", "lights")


def test_missing_subject_names_the_prompt(tokenizer):
    with pytest.raises(ValueError, match="'Cars parked'"):
        subject_tokens(tokenizer, "Cars parked", "Trucks")
    with pytest.raises(ValueError, match="'Cars parked'"):
        subject_tokens(tokenizer, "Cars parked", "Trucks", "word_index_raw")


def test_unknown_index_mode():
    # Validated once, by the method's config (subject_tokens trusts its index_mode).
    with pytest.raises(ConfigError, match=r"method\.subject\.index_mode='spacy' is not one of \['clip_aligned'"):
        GradSAM(subject={"index_mode": "spacy"})
