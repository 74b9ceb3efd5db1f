"""Tokenizer: byte-level BPE training, special tokens, image-code tokens, save/load. Run::

.venv/bin/pytest tests/unit/models/test_tokenizer.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from components.models.tokenizer import (
    SPECIAL_TOKENS,
    add_image_code_tokens,
    ensure_vlm_tokens,
    image_code_tokens,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

CORPUS = [
    "USER: What modality is this image?\nASSISTANT: CT",
    "Is there a lesion in the left lung? yes",
    "Convert this CT slice of the brain to MRI.",
    "Tumour size 12 µm, café-au-lait spots; no fracture.",
] * 10


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return train_tokenizer(CORPUS, vocab_size=400)


def test_special_tokens_take_the_first_ids(tok: PreTrainedTokenizerFast) -> None:
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert 300 < len(tok) <= 400


@pytest.mark.parametrize("text", [CORPUS[0], CORPUS[3], "unseen wörds ✓ 123", "  leading spaces"])
def test_round_trip_without_automatic_bos_or_eos(tok: PreTrainedTokenizerFast, text: str) -> None:
    ids = tok(text)["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids  # no post-processor (STACK §2f)
    assert tok.unk_token_id not in ids  # byte level: nothing is unknown
    assert tok.decode(ids) == text


def test_no_prefix_space_so_pieces_concatenate(tok: PreTrainedTokenizerFast) -> None:
    assert tok.decode(tok("USER: ")["input_ids"] + tok("yes")["input_ids"]) == "USER: yes"


def test_image_code_tokens_are_contiguous_specials() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=400)
    before = len(tok)
    ids = add_image_code_tokens(tok, codebook_size=32)
    assert len(tok) == before + 34
    assert ids == list(range(before, before + 34))
    codes = image_code_tokens(tok)
    assert (codes.start, codes.end, codes.codes) == (ids[0], ids[1], tuple(ids[2:]))
    assert add_image_code_tokens(tok, 32) == ids  # idempotent
    with pytest.raises(ValueError, match="already has 32 image-code tokens; asked for 16"):
        add_image_code_tokens(tok, 16)
    text_ids = tok("yes", add_special_tokens=False)["input_ids"]
    assert tok.decode([codes.start, codes.codes[5], *text_ids, codes.end], skip_special_tokens=True) == "yes"
    assert tok("<img_start><code_3><img_end>", add_special_tokens=False)["input_ids"] == [
        codes.start,
        codes.codes[3],
        codes.end,
    ]


def test_image_code_tokens_missing_is_a_clear_error(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="call add_image_code_tokens"):
        image_code_tokens(tok)


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = train_tokenizer(CORPUS, vocab_size=400)
    add_image_code_tokens(tok, 8)
    save_tokenizer(tok, tmp_path / "tok")
    for loaded in (load_tokenizer(tmp_path / "tok"), AutoTokenizer.from_pretrained(str(tmp_path / "tok"))):
        assert len(loaded) == len(tok)
        assert loaded.get_vocab() == tok.get_vocab()
        for text in CORPUS[:4]:
            assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert image_code_tokens(loaded) == image_code_tokens(tok)
        assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<s>", "</s>")


def test_load_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="local folders only"):
        load_tokenizer(tmp_path / "nope")


def test_ensure_vlm_tokens_on_a_foreign_tokenizer() -> None:
    raw = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "</s>": 2}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    assert tok.pad_token_id is None
    image_id = ensure_vlm_tokens(tok)
    assert image_id == 3 and tok.convert_tokens_to_ids("<image>") == 3
    assert tok.pad_token_id == tok.eos_token_id  # pads are masked, so EOS serves
    assert ensure_vlm_tokens(tok) == 3 and len(tok) == 4  # idempotent
