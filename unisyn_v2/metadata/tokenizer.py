"""The metadata-prompt tokenizer: self-contained, deterministic, saved as JSON next to the text encoder.

Scheme (why it suits metadata prompts):

- **Whole words for the fixed vocabulary.** The prompt template (``Age``, ``Gender``, ``Imaging``,
  ``parameter``, ``TR``, ``ms`` ...), modality names (``T1w``, ``FDG-PET``), tracers, PET units, ``None``
  and common vendors are single tokens, so a prompt stays short (an MRI prompt is about 110-125 tokens, well
  inside UniSyn's 224) and each field name is one unambiguous symbol the transformer can attach its
  value to.
- **Every other character is a byte.** Digits, ``.``, ``-``, spaces, punctuation and any word outside the
  vocabulary (a reconstruction kernel, an unusual vendor, even non-ASCII text) are encoded as their
  UTF-8 bytes, one token each. Nothing is ever unknown, and ``decode(encode(text)) == text`` for every
  string, not just for prompts.
- **Numbers are digit sequences.** Values carry the meaning here (TR 2300 vs 4000 ms, TE 10 vs 100 ms).
  A BPE vocabulary such as CLIP's merges digit runs arbitrarily (``2300`` may become ``23|00`` while
  ``4000`` is one token), so neighbouring values get unrelated ids and place value is lost. One token
  per digit plus a token for the decimal point keeps every number intact and distinguishable (2300 and
  4000 differ in exactly the digits that differ) with a ten-symbol alphabet that every value trains;
  prompts always write ``repr(round(x, 3))``, so a digit's place is its offset from the ``.``, which a
  transformer with positional embeddings can learn to read.

  Two number-aware variants are available (``number_mode``): ``magnitude`` puts a zero-width marker
  ``<eK>`` (K = integer digits - 1) before each stand-alone number, and ``place`` makes each digit a
  token that also carries its power of ten (``1e2 0e1 0e0 . 0e-1`` for ``100.0``). Both were measured
  on the phantom against plain digits (same data, 300 steps): retrieval was within noise and the TE/TR
  sensitivity of the text embedding was not clearly better, so ``digits``, the simplest, is the default.

Words match only on word boundaries (the characters around them are not letters or digits) and the
longest vocabulary word wins, so ``AV45-PET`` is one token while ``AV45x`` falls back to bytes.
Special ids: ``<pad>`` = 0, ``<sot>`` = 1, ``<eot>`` = 2; byte b has id 3 + b; then the number tokens
of the mode (none for ``digits``), then the words in the saved order. Prompts longer than the context
are an error, never silently cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unisyn_v2.io_utils import read_json, write_json_atomic
from unisyn_v2.metadata.fields import PET_UNITS
from unisyn_v2.metadata.modalities import known_modalities
from unisyn_v2.metadata.prompts import PROMPT_STYLES

if TYPE_CHECKING:  # torch is only needed by encode_batch
    import torch

TOKENIZER_FORMAT = "unisyn_v2.MetadataTokenizer"
TOKENIZER_VERSION = 1
DEFAULT_CONTEXT_LENGTH = 224  # UniSyn's context (TUMSyn used 90)
PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"
SPECIAL_TOKENS = (PAD, SOT, EOT)
_BYTE_OFFSET = len(SPECIAL_TOKENS)
_NUM_BYTES = 256
_NUMBER_OFFSET = _BYTE_OFFSET + _NUM_BYTES
NUMBER_MODES = ("digits", "magnitude", "place")
_MAX_INT_DIGITS = 10  # magnitude markers <e0> .. <e9>
_PLACES = tuple(range(6, -4, -1))  # place tokens for 10^6 .. 10^-3
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# The words of the prompt template (unisyn_v2.metadata.prompts) and of the values it commonly holds.
TEMPLATE_WORDS = (
    "Age", "Gender", "Scanner", "Modality", "Tracer", "Voxel", "size", "Imaging", "parameter",
    "TR", "TE", "TI", "FA", "ms", "degree", "and", "kVp", "kernel", "dose", "MBq", "uptake", "min",
    "unit", "None",
)
VALUE_WORDS = (
    "Siemens", "GE", "Philips", "Toshiba", "Canon", "Hitachi", "United", "UIH", "Neusoft", "Fujifilm",
    "FDG", "AV45", "TAU",
)


class MetadataTokenizer:
    """Word-plus-byte tokenizer for structured metadata prompts (see the module docstring).

    Args:
        words: multi-character vocabulary words (order fixes their ids; duplicates are dropped).
        context_length: the longest token sequence, ``<sot>`` and ``<eot>`` included.
        number_mode: how a stand-alone number is written: ``digits`` (one byte token per digit and
            point), ``magnitude`` (the same preceded by a zero-width marker ``<eK>``, K = integer digits
            - 1) or ``place`` (each digit a token that also carries its power of ten).
        prompt_style: how the prompts this tokenizer's text encoder is trained on treat missing values
            (:mod:`unisyn_v2.metadata.prompts`); saved with it, ``legacy`` for files from before the styles.
    """

    def __init__(self, words: Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH,
                 number_mode: str = "digits", prompt_style: str = "compact") -> None:
        if number_mode not in NUMBER_MODES:
            raise ValueError(f"number_mode must be one of {', '.join(NUMBER_MODES)}, got {number_mode!r}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {prompt_style!r}")
        self.number_mode = number_mode
        self.prompt_style = prompt_style
        self._num_number_tokens = {"digits": 0, "magnitude": _MAX_INT_DIGITS, "place": 10 * len(_PLACES)}[number_mode]
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (<sot>, one token, <eot>), got {context_length}")
        unique: list[str] = []
        for word in words:
            if not isinstance(word, str) or len(word) < 2 or any(c.isspace() for c in word):
                raise ValueError(f"vocabulary words must be strings of >= 2 characters without spaces, got {word!r}")
            if word not in unique:
                unique.append(word)
        self.words: tuple[str, ...] = tuple(unique)
        self.context_length = int(context_length)
        self._word_offset = _NUMBER_OFFSET + self._num_number_tokens
        self._word_id = {word: self._word_offset + i for i, word in enumerate(self.words)}
        self._by_first: dict[str, list[str]] = {}
        for word in sorted(self.words, key=lambda w: (-len(w), w)):  # longest match first
            self._by_first.setdefault(word[0], []).append(word)

    @classmethod
    def default(cls, extra_words: Iterable[str] = (), context_length: int = DEFAULT_CONTEXT_LENGTH,
                number_mode: str = "digits") -> "MetadataTokenizer":
        """The template words, every registered modality, PET units, vendors and tracers (+ ``extra_words``)."""
        modality_words = [m for m in known_modalities() if len(m) >= 2]
        units = [u for u in PET_UNITS if len(u) >= 2]
        return cls([*TEMPLATE_WORDS, *modality_words, *units, *VALUE_WORDS, *extra_words], context_length, number_mode)

    @property
    def pad_id(self) -> int:
        """Padding id (0)."""
        return 0

    @property
    def sot_id(self) -> int:
        """Start-of-text id."""
        return 1

    @property
    def eot_id(self) -> int:
        """End-of-text id; the text encoder pools here."""
        return 2

    @property
    def vocab_size(self) -> int:
        """Number of ids (specials + 256 bytes + number tokens + words)."""
        return self._word_offset + len(self.words)

    def _match_word(self, text: str, start: int) -> str | None:
        if start > 0 and text[start - 1].isalnum():
            return None
        for word in self._by_first.get(text[start], ()):
            end = start + len(word)
            if text.startswith(word, start) and (end == len(text) or not text[end].isalnum()):
                return word
        return None

    def _match_number(self, text: str, start: int) -> str | None:
        if self.number_mode == "digits" or (start > 0 and (text[start - 1].isalnum() or text[start - 1] == ".")):
            return None
        match = _NUMBER.match(text, start)
        if match is None or (match.end() < len(text) and text[match.end()].isalnum()):
            return None
        return match.group(0)

    def _number_ids(self, number: str) -> list[int]:
        integer, _, fraction = number.partition(".")
        byte = [_BYTE_OFFSET + b for b in number.encode("ascii")]
        if self.number_mode == "magnitude":
            return ([_NUMBER_OFFSET + len(integer) - 1] if len(integer) <= _MAX_INT_DIGITS else []) + byte
        ids: list[int] = []
        places = [len(integer) - 1 - i for i in range(len(integer))] + [None] + [-1 - i for i in range(len(fraction))]
        for char, place, raw in zip(number, places, byte):
            if place is None or place not in _PLACES:
                ids.append(raw)
            else:
                ids.append(_NUMBER_OFFSET + 10 * _PLACES.index(place) + int(char))
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` without ``<sot>``/``<eot>`` and without a length check."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        i = 0
        while i < len(text):
            number = self._match_number(text, i) if text[i].isdigit() else None
            if number is not None:
                ids.extend(self._number_ids(number))
                i += len(number)
                continue
            word = self._match_word(text, i)
            if word is not None:
                ids.append(self._word_id[word])
                i += len(word)
            else:
                ids.extend(_BYTE_OFFSET + b for b in text[i].encode("utf-8"))
                i += 1
        return ids

    def encode(self, text: str) -> list[int]:
        """``[<sot>, tokens..., <eot>]``; ValueError naming the length if it exceeds the context."""
        ids = [self.sot_id, *self.tokenize(text), self.eot_id]
        if len(ids) > self.context_length:
            raise ValueError(
                f"prompt needs {len(ids)} tokens (with <sot>/<eot>), more than the text encoder's context of "
                f"{self.context_length}; shorten the metadata text (prompts are never cut): {text[:80]!r}..."
            )
        return ids

    def encode_batch(self, texts: Sequence[str], length: int | None = None) -> "torch.Tensor":
        """LongTensor (B, length or context_length) padded with ``pad_id``."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of prompts, not one string (use encode)")
        width = self.context_length if length is None else int(length)
        if not 1 <= width <= self.context_length:
            raise ValueError(f"length must lie in [1, {self.context_length}], got {length}")
        out = torch.full((len(texts), width), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > width:
                raise ValueError(f"prompt {row} needs {len(ids)} tokens, more than the requested length {width}")
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are dropped, bytes are joined and read as UTF-8."""
        buffer = bytearray()
        for raw in ids:
            token = int(raw)
            if token < 0 or token >= self.vocab_size:
                raise ValueError(f"token id {token} is outside the vocabulary [0, {self.vocab_size})")
            if token < _BYTE_OFFSET:
                continue
            if token < _NUMBER_OFFSET:
                buffer.append(token - _BYTE_OFFSET)
            elif token < self._word_offset:
                if self.number_mode == "place":
                    buffer.extend(str((token - _NUMBER_OFFSET) % 10).encode("ascii"))
                # magnitude markers are zero-width
            else:
                buffer.extend(self.words[token - self._word_offset].encode("utf-8"))
        return buffer.decode("utf-8", errors="replace")

    def token_strings(self, text: str) -> list[str]:
        """Human-readable pieces of ``text`` (bytes shown as characters), for debugging."""
        out = []
        for i in self.tokenize(text):
            if _BYTE_OFFSET + 128 <= i < _NUMBER_OFFSET:
                out.append(f"<0x{i - _BYTE_OFFSET:02X}>")
            elif _NUMBER_OFFSET <= i < self._word_offset and self.number_mode == "magnitude":
                out.append(f"<e{i - _NUMBER_OFFSET}>")
            elif _NUMBER_OFFSET <= i < self._word_offset:
                k = i - _NUMBER_OFFSET
                out.append(f"{k % 10}e{_PLACES[k // 10]}")
            else:
                out.append(self.decode([i]))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (everything needed to rebuild identical ids)."""
        return {
            "format": TOKENIZER_FORMAT,
            "version": TOKENIZER_VERSION,
            "context_length": self.context_length,
            "special_tokens": {name: i for i, name in enumerate(SPECIAL_TOKENS)},
            "byte_offset": _BYTE_OFFSET,
            "number_mode": self.number_mode,
            "prompt_style": self.prompt_style,
            "words": list(self.words),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer") -> "MetadataTokenizer":
        """Rebuild from :meth:`to_dict`; errors name the source."""
        if not isinstance(data, dict) or data.get("format") != TOKENIZER_FORMAT:
            raise ValueError(f"{source}: not a {TOKENIZER_FORMAT} file")
        version = data.get("version")
        if not isinstance(version, int) or version > TOKENIZER_VERSION:
            raise ValueError(f"{source}: tokenizer version {version!r} is newer than this unisyn_v2 reads "
                             f"({TOKENIZER_VERSION})")
        specials = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
        if data.get("byte_offset") != _BYTE_OFFSET or data.get("special_tokens") != specials:
            raise ValueError(f"{source}: special token layout differs from this unisyn_v2's")
        words, context = data.get("words"), data.get("context_length")
        if not isinstance(words, list) or not isinstance(context, int):
            raise ValueError(f"{source}: needs 'words' (list) and 'context_length' (int)")
        # a tokenizer saved before prompt styles existed belongs to an encoder trained on legacy prompts
        return cls(words, context, str(data.get("number_mode", "digits")), str(data.get("prompt_style", "legacy")))

    def save(self, path: Path) -> Path:
        """Write the tokenizer JSON atomically."""
        return write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "MetadataTokenizer":
        """Read a tokenizer written by :meth:`save`."""
        return cls.from_dict(read_json(Path(path)), source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"MetadataTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
