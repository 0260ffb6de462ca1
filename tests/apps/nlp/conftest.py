"""A tiny random BERT sentence encoder, and the same as a Hugging Face-format folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mobiledl.apps.nlp.encoder import EncoderConfig, SentenceEncoder, _hf_names

TINY = {
    "vocab_size": 30522,
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "hidden_act": "gelu",
}


def tiny_encoder(seed: int = 0) -> SentenceEncoder:
    torch.manual_seed(seed)
    fields = {k: v for k, v in TINY.items() if k not in ("model_type", "hidden_act")}
    config = EncoderConfig(**fields)
    encoder = SentenceEncoder(config)
    for parameter in encoder.parameters():  # larger than the init's, so heads differ clearly
        parameter.data.normal_(0, 0.3)
    return encoder.eval()


def minilm_or_skip() -> Path:
    from mobiledl.apps.nlp.pretrained import minilm_folder
    from mobiledl.errors import UserError

    try:
        return minilm_folder()
    except UserError as error:
        pytest.skip(f"the pretrained MiniLM is not installed ({error})")


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A Hugging Face-format folder of ``tiny_encoder()`` with the MiniLM tokenizer."""
    from safetensors.torch import save_file

    encoder = tiny_encoder()
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    state = encoder.state_dict()
    names = _hf_names(encoder.config)
    tensors = {names[k]: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    shutil.copyfile(minilm_or_skip() / "tokenizer.json", folder / "tokenizer.json")
    return folder


def batch(lengths: list[int], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``[CLS] ... [SEP]`` texts of the given lengths, padded to ``width``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1000, 20000, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = 101, 102
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}
