"""The sentence encoder: loading, cascade token pruning, head pruning, ONNX and int8."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mobiledl.apps.nlp.encoder import _TokenState, check_schedule, load_encoder
from mobiledl.apps.nlp.probe import embed, mean_cosine
from mobiledl.compress.prune.heads import prune_heads
from mobiledl.deploy.text_encoder import OnnxEncoder, export_encoder, integer_ops, quantize_encoder
from mobiledl.errors import UserError
from tests.apps.nlp.conftest import batch, minilm_or_skip, tiny_encoder

SCHEDULE = {0: 0.7, 1: 0.4}


def run(encoder, x):  # noqa: ANN001, ANN201 - test helper
    with torch.no_grad():
        return encoder(x["input_ids"], x["attention_mask"])


def test_embeddings_are_unit_length_and_ignore_padding() -> None:
    encoder = tiny_encoder()
    short, padded = batch([9, 12], 12), batch([9, 12], 20)
    for schedule in ({}, SCHEDULE):
        encoder.set_token_pruning(schedule, "carry")
        a, b = run(encoder, short), run(encoder, padded)
        assert torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-5)
        assert torch.allclose(a, b, atol=1e-5)


def test_keeping_every_token_changes_nothing() -> None:
    encoder = tiny_encoder()
    x = batch([10, 16, 5], 16)
    full = run(encoder, x)
    for pooling in ("carry", "kept"):
        encoder.set_token_pruning({0: 1.0, 2: 1.0}, pooling)
        assert torch.allclose(run(encoder, x), full, atol=1e-5)
    encoder.set_token_pruning(SCHEDULE)
    assert not torch.allclose(run(encoder, x), full, atol=1e-3)


def test_prune_keeps_the_special_tokens_and_each_texts_own_count() -> None:
    x = torch.randn(2, 8, 4)
    valid = torch.tensor([[1] * 8, [1] * 4 + [0] * 4]).bool()
    state = _TokenState.start(x, valid, carry=False)
    state.importance = torch.arange(8.0).repeat(2, 1)  # later tokens more important
    kept = state.prune(x, 0.5)
    assert state.valid.sum(1).tolist() == [4, 2]  # ceil(0.5 * 8), ceil(0.5 * 4)
    assert state.special.sum(1).tolist() == [2, 2]  # [CLS] and [SEP] survive
    first = [x[0, i] for i in (0, 5, 6, 7)]  # [CLS] + the 3 most important
    assert all(any(torch.equal(row, t) for row in kept[0]) for t in first)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [({3: 0.5}, "not in 0..2"), ({0: 0.0}, r"not in \(0,1\]"), ({0: 0.4, 1: 0.6}, "more than")],
)
def test_bad_schedules_are_one_line_errors(schedule: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_schedule(schedule, 3)


def test_onnx_export_matches_eager_with_token_pruning(tmp_path: Path) -> None:
    encoder = tiny_encoder()
    encoder.set_token_pruning({0: 0.7, 1: 0.5, 2: 0.3})
    path = export_encoder(encoder, tmp_path / "e.onnx", 24)
    deployed = OnnxEncoder.from_files({24: path})
    x = batch([24, 17, 6, 3], 24)
    assert np.abs(deployed(**x).numpy() - run(encoder, x).numpy()).max() < 1e-5


def test_int8_runs_integer_kernels_and_stays_close(tmp_path: Path) -> None:
    encoder = tiny_encoder()
    fp32 = export_encoder(encoder, tmp_path / "e.onnx", 16)
    int8 = quantize_encoder(fp32, tmp_path / "e8.onnx")
    assert integer_ops(fp32) == 0
    assert integer_ops(int8) == 6 * 3  # q, k, v, out and the two feed-forward layers per layer
    x = batch([16, 9, 12], 16)
    a, b = (OnnxEncoder.from_files({16: p})(**x).numpy() for p in (fp32, int8))
    assert 0.9 < mean_cosine(a, b) < 1.0


def test_head_pruning_equals_zeroing_the_removed_heads() -> None:
    encoder = tiny_encoder()
    x = batch([12, 7], 12)
    pruned = prune_heads(encoder, 0.5, [x])
    assert [layer.attention.num_heads for layer in pruned.layers] == [2, 2, 2]
    masked = tiny_encoder()
    for original, small in zip(masked.layers, pruned.layers, strict=True):
        attention, dim = original.attention, original.attention.head_dim
        kept_columns = {tuple(c.tolist()) for c in small.attention.out_proj.weight.T}
        for head in range(attention.num_heads):
            columns = attention.out_proj.weight[:, head * dim : (head + 1) * dim].T
            if not all(tuple(c.tolist()) in kept_columns for c in columns):
                attention.out_proj.weight.data[:, head * dim : (head + 1) * dim] = 0
    assert torch.allclose(run(pruned, x), run(masked, x), atol=1e-5)
    with pytest.raises(UserError, match="not in"):
        prune_heads(encoder, 0.0, [x])


def test_embed_restores_the_order_of_texts() -> None:
    encoder = tiny_encoder()
    x = batch([5, 16, 3, 9, 16], 16)
    whole = run(encoder, x).numpy()
    assert np.allclose(embed(encoder, x, batch_size=2), whole, atol=1e-5)


def test_load_encoder_errors_name_the_file_and_field(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        load_encoder(tmp_path)
    config = json.loads((tiny_folder / "config.json").read_text())
    del config["hidden_size"]
    (tiny_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="missing field 'hidden_size'"):
        load_encoder(tiny_folder)


def test_the_tiny_folder_loads_back(tiny_folder: Path) -> None:
    loaded, original = load_encoder(tiny_folder), tiny_encoder()
    x = batch([8, 5], 8)
    assert torch.allclose(run(loaded, x), run(original, x), atol=1e-6)


@pytest.mark.slow
def test_pretrained_minilm_ranks_paraphrases_first() -> None:
    from mobiledl.apps.nlp.pretrained import Tokenizer

    folder = minilm_or_skip()
    encoder = load_encoder(folder)
    texts = ["A gripping, beautifully shot film.", "A stunning and gripping movie.",
             "The invoice is due on Friday."]  # fmt: skip
    emb = run(encoder, Tokenizer(folder).encode(texts, 16))
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2
    assert math.isclose(float(emb[0].norm()), 1.0, rel_tol=1e-5)


def test_a_sequence_longer_than_the_limit_is_one_line() -> None:
    with pytest.raises(UserError, match="longer than the model's limit"):
        run(tiny_encoder(), batch([70], 70))
