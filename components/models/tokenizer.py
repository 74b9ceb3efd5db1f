"""The text tokenizer of the tiny VLM, and the image-code tokens HealthGPT's generation path adds (METHODS.md §1).

Train a byte-level BPE on the corpus, add the VQ code tokens, save it beside the model::

    from components.models.tokenizer import add_image_code_tokens, load_tokenizer, save_tokenizer, train_tokenizer
    tok = train_tokenizer(texts, vocab_size=1000)        # <pad> <unk> <s> </s> <image> are ids 0..4
    ids = add_image_code_tokens(tok, codebook_size=512)  # [<img_start>, <img_end>, <code_0>, ..., <code_511>]
    save_tokenizer(tok, folder); tok = load_tokenizer(folder)   # or AutoTokenizer.from_pretrained(folder)

Choices where METHODS.md is silent:

- **No post-processor.** ``tokenizer(text)`` adds neither ``<s>`` nor ``</s>``; the collator puts BOS at the start
  and EOS after each answer itself. A ``TemplateProcessing`` that appends ``</s>`` would also end every generation
  prompt with EOS (STACK.md §2f), so the model would be asked to continue after "end of text".
- **No prefix space** (``ByteLevel(add_prefix_space=False)``): the collator tokenizes a prompt in pieces around the
  ``<image>`` placeholder, and a prefix space would insert a space at every piece boundary.
- **Image-code tokens are special tokens** added after the trained vocabulary, contiguous and in code order, so
  ``decode(..., skip_special_tokens=True)`` drops them from text answers. HealthGPT also adds a row separator; the
  grid size is fixed here, so the count alone delimits rows and no separator is added.
- A checkpoint's own tokenizer (a GPU user's base model) goes through :func:`ensure_vlm_tokens`, which adds
  ``<image>`` when missing and uses EOS as the pad token when it has none (pads are never attended nor learned).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)
IMG_START, IMG_END = "<img_start>", "<img_end>"


def code_token(index: int) -> str:
    return f"<code_{index}>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; the special tokens take ids 0..4 in the order of SPECIAL_TOKENS.

    The vocabulary may stay below ``vocab_size`` on a small corpus (no merge left to learn)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size {vocab_size} is below the byte alphabet plus specials ({256 + len(SPECIAL_TOKENS)})"
        )
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[IMAGE],
    )


def ensure_vlm_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Make sure ``tokenizer`` has ``<image>`` and a pad token; return the ``<image>`` id. Idempotent."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; medtune ends every answer with EOS")
    if IMAGE not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE, special=True, normalized=False)], special_tokens=True)
    ensure_pad_token(tokenizer)
    return token_id(tokenizer, IMAGE)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Use EOS as the pad token when a checkpoint's tokenizer has none (pads are never attended nor learned)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


@dataclass(frozen=True)
class ImageCodeTokens:
    """Token ids of the generation path: ``codes[i]`` is the token of VQ code ``i``."""

    start: int
    end: int
    codes: tuple[int, ...]

    @property
    def codebook_size(self) -> int:
        return len(self.codes)

    def code_index(self) -> dict[int, int]:
        """Token id -> code index."""
        return {tid: i for i, tid in enumerate(self.codes)}


def add_image_code_tokens(tokenizer: PreTrainedTokenizerBase, codebook_size: int) -> list[int]:
    """Add ``<img_start>``, ``<img_end>`` and ``<code_0>``..``<code_{K-1}>`` as special tokens.

    Returns their ids in that order. Calling it again with the same size returns the same ids; a different size
    on a tokenizer that already has codes is an error (the model's rows would no longer match)."""
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    vocab = tokenizer.get_vocab()
    if IMG_START in vocab:
        existing = image_code_tokens(tokenizer)
        if existing.codebook_size != codebook_size:
            raise ValueError(
                f"the tokenizer already has {existing.codebook_size} image-code tokens; asked for {codebook_size}"
            )
        return [existing.start, existing.end, *existing.codes]
    names = [IMG_START, IMG_END, *(code_token(i) for i in range(codebook_size))]
    tokenizer.add_tokens([AddedToken(n, special=True, normalized=False) for n in names], special_tokens=True)
    return [token_id(tokenizer, n) for n in names]


def image_code_tokens(tokenizer: PreTrainedTokenizerBase) -> ImageCodeTokens:
    """Look up the image-code token ids of a tokenizer that went through :func:`add_image_code_tokens`."""
    vocab = tokenizer.get_vocab()
    if IMG_START not in vocab or IMG_END not in vocab:
        raise ValueError("the tokenizer has no image-code tokens: call add_image_code_tokens(tokenizer, K) first")
    codes: list[int] = []
    while code_token(len(codes)) in vocab:
        codes.append(vocab[code_token(len(codes))])
    if not codes:
        raise ValueError("the tokenizer has <img_start>/<img_end> but no <code_i> tokens")
    return ImageCodeTokens(start=vocab[IMG_START], end=vocab[IMG_END], codes=tuple(codes))


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token (a TypeError if the tokenizer maps it to several)."""
    value = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(value, int):
        raise TypeError(f"{token!r} did not map to one id: {value!r}")
    return value


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder`` (created if needed)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(folder: str | Path, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder (never from a hub)."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer folder {str(folder)!r} does not exist; medtune loads tokenizers from local folders only"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
