"""The sentence encoder in ONNX Runtime: fp32, and int8 with integer kernels.

``export_encoder`` writes the encoder (with its token-pruning schedule, as top-k + gather of
fixed per-layer sizes) through the project's ONNX Runtime engine, for inputs of one fixed
sequence length: fixed keep counts give static shapes, which ONNX Runtime runs faster than
data-dependent ones and which the int8 pass below can quantize.

``quantize_encoder`` makes every linear layer int8 with per-channel symmetric weights and
dynamic (per-batch, computed at run time) uint8 activations -- the dynamic quantization that
suits transformers, whose activation ranges vary from input to input (Zafrir et al. 2019,
Q8BERT; Jacob et al. 2018 for the integer arithmetic). ONNX Runtime's ``quantize_dynamic``
does the graph rewrite into ``DynamicQuantizeLinear`` + ``MatMulInteger`` and fuses them;
``integer_ops`` checks that the integer kernels are what the session runs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import torch

from mobiledl.apps.nlp.encoder import SentenceEncoder
from mobiledl.core.inputs import InputSpec
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path

INPUT_NAMES = ("input_ids", "attention_mask")
INTEGER_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def encoder_specs(encoder: SentenceEncoder, length: int) -> tuple[InputSpec, ...]:
    """The exported graph's inputs: int64 ``(batch, length)`` ids and mask."""
    limit = encoder.config.max_position_embeddings
    if not 2 <= length <= limit:
        raise UserError(f"sequence length {length} is not in 2..{limit} (the model's limit)")
    vocab = encoder.config.vocab_size
    return (
        InputSpec("input_ids", (None, length), torch.int64, vocab),
        InputSpec("attention_mask", (None, length), torch.int64, 2),
    )


def export_encoder(encoder: SentenceEncoder, path: Path, length: int = 128) -> Path:
    """Write ``encoder`` as an fp32 ONNX graph for ``(batch, length)`` inputs."""
    from mobiledl.deploy.onnxruntime import OnnxRuntimeEngine

    specs = encoder_specs(encoder, length)
    example = {
        "input_ids": torch.full((1, length), 101, dtype=torch.int64),
        "attention_mask": torch.ones(1, length, dtype=torch.int64),
    }
    return OnnxRuntimeEngine().export(encoder.eval(), example, path, specs)


def quantize_encoder(source: Path, target: Path) -> Path:
    """Write the int8 version of the fp32 graph ``source`` (module docstring) to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(target) as tmp, warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(source),
            str(tmp),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return target


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Hold back the root-logger advice ``quantize_dynamic`` prints on every call (to run
    its shape pre-processing, which changes nothing for this graph): stderr stays one line
    per real problem."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def integer_ops(path: Path) -> int:
    """How many integer matrix-product nodes the graph in ``path`` holds (0 for fp32)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.op_type in INTEGER_OPS for node in graph.node)


class OnnxEncoder:
    """An encoder deployed in ONNX Runtime as graphs of a few fixed lengths (``lengths``):
    each batch runs in the shortest graph that holds its longest text, padded to it.

    Fixed lengths keep the token-pruning graphs static (module docstring) while short texts
    do not pay for the longest bucket's padding.
    """

    def __init__(self, paths: dict[int, Path], threads: int | None = 1) -> None:
        from mobiledl.deploy.onnxruntime import OnnxRuntimeEngine

        if not paths:
            raise UserError("an ONNX encoder needs at least one graph")
        self.lengths = tuple(sorted(paths))
        self.paths = dict(paths)
        self.engine = OnnxRuntimeEngine()
        self.runners = {length: self.engine.load(p, threads) for length, p in self.paths.items()}

    @classmethod
    def export(
        cls,
        encoder: SentenceEncoder,
        folder: Path,
        lengths: tuple[int, ...] = (32, 64, 128),
        int8: bool = False,
        threads: int | None = 1,
    ) -> OnnxEncoder:
        """Export ``encoder`` at every length into ``folder`` (int8 if asked) and load it."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for length in lengths:
            path = export_encoder(encoder, folder / f"encoder_{length}.onnx", length)
            if int8:
                path = quantize_encoder(path, folder / f"encoder_{length}_int8.onnx")
            paths[length] = path
        return cls(paths, threads)

    @classmethod
    def from_files(cls, paths: dict[int, Path], threads: int | None = None) -> OnnxEncoder:
        """Load graphs written earlier (``{length: path}``)."""
        for path in paths.values():
            if not path.is_file():
                raise UserError(f"{path}: no such ONNX file")
        return cls(paths, threads)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(N, hidden)`` embeddings; texts longer than the longest graph are truncated."""
        used = int(attention_mask.sum(1).max())
        length = next((n for n in self.lengths if n >= used), self.lengths[-1])
        ids, mask = (_fit(t, length) for t in (input_ids, attention_mask))
        out = self.runners[length].run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        return torch.from_numpy(out)

    def runner(self, length: int, threads: int | None) -> Callable[..., torch.Tensor]:
        """``(input_ids, attention_mask) -> embeddings`` through the graph of ``length`` alone,
        in a session of its own with ``threads`` threads (for timing)."""
        session = self.engine.load(self.paths[length], threads)

        def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
            return torch.from_numpy(session.run(feed))

        return run

    def file_bytes(self, length: int) -> int:
        """Size of the graph file of one length."""
        return self.paths[length].stat().st_size


def _fit(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``(N, L)`` cut or zero-padded to ``(N, length)``."""
    if tensor.shape[1] >= length:
        return tensor[:, :length].contiguous()
    return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]))
