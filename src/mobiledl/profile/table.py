"""Plain-text per-layer tables of a ``ModelProfile`` and of an ``EngineProfile``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mobiledl.profile.engine_profile import EngineProfile, LayerTime
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


def format_engine_table(profile: EngineProfile, top: int) -> str:
    """The ``top`` slowest rows of an engine profile (layer, ops, time, share, MACs, achieved
    GMAC/s, bytes), the rest summed in one line, then the totals and end-to-end latencies."""
    header = ["layer", "ops", "ms", "share %", "MACs", "GMAC/s", "bytes"]
    shown, rest = profile.layers[:top], profile.layers[top:]
    rows = [_engine_row(layer) for layer in shown]
    lines = _align([header, *rows], numeric_from=2)
    rule = "-" * len(lines[0])
    out = [lines[0], rule, *lines[1:]]
    if rest:
        rest_ms = sum(layer.time_ms for layer in rest)
        out.append(f"... {len(rest)} more rows: {rest_ms:.3f} ms (--json lists every row)")
    totals = profile.totals()
    out += [
        rule,
        f"layers total {profile.layers_ms:.3f} ms; mapped to named modules "
        f"{100 * profile.coverage:.1f}%",
        f"end-to-end {profile.latency_ms_median:.3f} ms unprofiled (median, p90 "
        f"{profile.latency_ms_p90:.3f}); layers / end-to-end {_fraction(totals, 'latency')}",
        f"{profile.engine}'s own time of the profiled runs {profile.engine_run_ms:.3f} ms; "
        f"layers / that {_fraction(totals, 'engine_run')}",
    ]
    return "\n".join(out)


def _engine_row(layer: LayerTime) -> list[str]:
    rate = layer.macs_per_s
    return [
        layer.name,
        ",".join(layer.ops),
        f"{layer.time_ms:.3f}",
        f"{100 * layer.share:.1f}",
        f"{layer.macs:,}" if layer.macs else "-",
        f"{rate / 1e9:.2f}" if rate else "-",
        f"{layer.bytes:,}",
    ]


def _fraction(totals: dict[str, float | None], key: str) -> str:
    value = totals[f"layers_over_{key}"]
    return "-" if value is None else f"{value:.3f}"
