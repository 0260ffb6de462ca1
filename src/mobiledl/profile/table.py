"""Plain-text per-layer table of a ``ModelProfile``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mobiledl.profile.profiler import LayerProfile, ModelProfile


def format_table(profile: ModelProfile) -> str:
    """Columns name, type, output shape, params, MACs, % of MACs (+ pool ops if any)."""
    with_pool = profile.pool_ops > 0
    header = ["name", "type", "output shape", "params", "MACs", "% MACs"]
    if with_pool:
        header.append("pool ops")
    rows = [_row(layer, profile.macs, with_pool) for layer in profile.layers]
    total = ["total", "", "", f"{profile.params:,}", f"{profile.macs:,}", "100.0"]
    if with_pool:
        total.append(f"{profile.pool_ops:,}")
    lines = _align([header, *rows, total], numeric_from=3)
    rule = "-" * len(lines[0])
    footer = [
        f"weights: {profile.bytes:,} bytes at {profile.bits} bits",
        f"peak activation memory: {profile.peak_memory_bytes:,} bytes at {profile.bits} bits"
        f" (at {profile.peak_memory_layer or '(model)'})",
    ]
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1], *footer])


def _row(layer: LayerProfile, total_macs: int, with_pool: bool) -> list[str]:
    shape = "" if layer.output_shape is None else "x".join(map(str, layer.output_shape))
    share = 100.0 * layer.macs / total_macs if total_macs else 0.0
    row = [
        layer.name or "(model)",
        layer.type,
        shape,
        f"{layer.params:,}",
        f"{layer.macs:,}",
        f"{share:.1f}",
    ]
    if with_pool:
        row.append(f"{layer.pool_ops:,}")
    return row


def _align(rows: list[list[str]], numeric_from: int) -> list[str]:
    """Columns padded to equal width; numeric columns right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i >= numeric_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
