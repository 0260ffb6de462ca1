"""Every benchmark's ``--smoke`` run: it runs end to end and writes results in the one schema.

Runs taking more than about 5 s are marked slow (``python -m pytest -m 'not slow'`` skips
them); ``.ci/run`` runs them all.
"""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import available
from benchmarks.harness import SCHEMA_KEYS

pytestmark = pytest.mark.usefixtures("restore_threads")
Report = dict[str, Any]


def run(name: str, out: Path, *extra: str) -> Report:
    """``python -m benchmarks NAME --smoke --out OUT EXTRA`` in process; the JSON it wrote."""
    module = importlib.import_module(f"benchmarks.{name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        returned = module.main(["--smoke", "--out", str(out), *extra])
    saved = json.loads((out / f"{name}.json").read_text())
    assert tuple(saved) == SCHEMA_KEYS and saved == json.loads(json.dumps(returned))
    assert saved["argv"] == [
        "python",
        "-m",
        "benchmarks",
        name,
        "--smoke",
        "--out",
        str(out),
        *extra,
    ]
    assert saved["git_commit"] and saved["config"]["smoke"] and saved["machine"]["cores"]
    assert (out / f"{name}.md").read_text().startswith("# ")
    return saved


def check_prune_finegrained(report: Report, out: Path) -> None:
    (row,) = report["rows"]
    assert row["model"] == "lenet300" and row["sparsity"] == pytest.approx(0.92, abs=0.005)
    assert row["sparse_format_bytes"] < row["dense_bytes"]
    assert "| lenet300 | digits |" in (out / "prune_finegrained.md").read_text()


def check_training_memory(report: Report, out: Path) -> None:
    assert len(report["rows"]) == 2 * 5
    if torch.backends.cpu.get_cpu_capability() == "AVX2":  # the kernels the model describes
        assert all(row["within_tolerance"] for row in report["rows"])


def check_distill(report: Report, out: Path) -> None:
    assert {row["variant"] for row in report["rows"]} == {"none", "logits", "logits+attention"}
    assert "| logits |" in (out / "distill.md").read_text()


def check_deep_compression(report: Report, out: Path) -> None:
    assert {row["kind"] for row in report["rows"]} == {"deep_compression", "lowbit", "mixed"}
    assert "## Mixed precision" in (out / "deep_compression.md").read_text()


def check_quantize_storage(report: Report, out: Path) -> None:
    rows = report["rows"]
    assert {row["method"] for row in rows} >= {"ptq-w8a8", "kmeans-4", "binary", "ternary-ttq"}
    assert all(row["round_trip_identical"] for row in rows)
    assert report["summary"]["exports_not_larger"] == len(rows)
    assert "| file ratio |" in (out / "quantize_storage.md").read_text()


def check_engine_overhead(report: Report, out: Path) -> None:
    rows = report["rows"]
    assert len(rows) == 4 and {row["batch_size"] for row in rows} == {1, 2}
    for row in rows:
        assert row["eager_median_ms"] <= row["eager_p90_ms"] and row["max_abs_diff"] < 1e-4
        assert row["repeats"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["engine_overhead.json", "engine_overhead.md"]


def check_nas_latency_predictor(report: Report, out: Path) -> None:
    assert len(report["rows"]) == 6 and report["summary"]["test_samples"] == 6
    assert set(report["summary"]["mape"]) == {"predictor", "lut_sum", "macs_linear"}
    assert "| learned predictor" in (out / "nas_latency_predictor.md").read_text()


def check_ondevice_transfer(report: Report, out: Path) -> None:
    methods = [row["method"] for row in report["rows"]]
    assert methods == ["full", "last", "bias", "tinytl", "sparse", "tinytl"]
    assert report["summary"]["sparse_all_within_budget"]
    budgeted = report["rows"][-1]
    assert budgeted["measured_peak_bytes"] <= budgeted["memory_budget_bytes"]
    assert report["summary"]["sparse_vs_tinytl_at_budget"][0]["tinytl"] == budgeted["accuracy"]


def check_quantize_speed(report: Report, out: Path) -> None:
    assert [row["batch_size"] for row in report["rows"]] == [1, 2]
    assert all(row["size_ratio"] > 3.0 and row["integer_ops"] > 0 for row in report["rows"])
    assert "| resnet20 | 3x16x16 | 1 |" in (out / "quantize_speed.md").read_text()


def check_quantize_ptq(report: Report, out: Path) -> None:
    (row,) = report["rows"]
    assert row["model"] == "resnet8" and row["agreement"] >= 0.99
    assert abs(row["ours_w8a8"] - row["fp32"]) <= 0.02
    assert row["integer_ops"]["QLinearConv"] == 9
    assert row["ours_ptq_seconds"] > 0 and row["ptq_time_ratio"] > 0
    assert "PTQ time ours / ORT" in (out / "quantize_ptq.md").read_text()


def check_factorize(report: Report, out: Path) -> None:
    rows = {(row["model"], row["variant"]): row for row in report["rows"]}
    assert set(rows) == {("resnet20", "tucker2+spatial"), ("lenet300", "svd")}
    for row in rows.values():
        assert row["macs_ratio"] <= 0.5 and row["ranks"]
        assert set(row["latency"]["factorized"]) == {"t1_b1", "t1_b32"}
    assert "| resnet20 | tucker2+spatial | 16 |" in (out / "factorize.md").read_text()


def check_prune_channel(report: Report, out: Path) -> None:
    (result,) = report["rows"]
    variants = {row["variant"]: row for row in result["variants"]}
    assert set(variants) == {
        "unpruned",
        "mobiledl-l1",
        "mobiledl-reconstruction",
        "mobiledl-reconstruction-latency",
        "torch-pruning",
    }
    for name, row in variants.items():
        assert set(row["latency"]) == {"t1_b1", "t1_b2"}
        assert name == "unpruned" or abs(row["macs_ratio"] - 0.5) < 0.05
    assert "| mobiledl-l1 |" in (out / "prune_channel.md").read_text()


def check_nas_supernet(report: Report, out: Path) -> None:
    kinds = [row["kind"] for row in report["rows"]]
    assert kinds == ["scratch"] * 2 + ["mobilenet_v2"] * 3
    assert "supernet_within_1.5_abs" in report["summary"]["checks"]
    assert "| architecture |" in (out / "nas_supernet.md").read_text()


def check_video_tsm(report: Report, out: Path) -> None:
    (row,) = report["rows"]
    models = row["models"]
    assert models["tsn_resnet8"]["macs"] == models["tsm_resnet8"]["macs"]
    assert models["tsn_resnet8"]["params"] == models["tsm_resnet8"]["params"]
    assert row["online"]["parity_torch"] <= 1e-5 and row["online"]["parity_ort"] <= 1e-5
    assert 0 < row["compose"]["pruned_macs_ratio"] <= 0.55
    assert report["summary"]["latency"]["ratio"] > 0
    assert "| video-motion |" in (out / "video_tsm.md").read_text()


def check_sparse_conv(report: Report, out: Path) -> None:
    assert [(row["pattern"], row["occupancy"]) for row in report["rows"]] == [
        ("uniform", 0.1),
        ("surface", 0.1),
    ]
    for row in report["rows"]:
        assert max(row["max_abs_diff_vs_dense"].values()) <= 1e-4
        assert row["latency"]["ours_cached"]["median_ms"] > 0
    assert "| uniform | 10% |" in (out / "sparse_conv.md").read_text()


def check_pointcloud(report: Report, out: Path) -> None:
    rows = {row["model"]: row for row in report["rows"]}
    assert list(rows) == ["pointnet", "dense_voxel_net", "sparse_voxel_net", "pvcnn", "spvcnn"]
    assert rows["pvcnn"]["params"] == rows["spvcnn"]["params"]
    assert rows["spvcnn"]["macs"] < rows["pvcnn"]["macs"]  # occupied voxels only
    assert all(
        row["latency"]["median_ms"] > 0 and 0 <= row["accuracy"] <= 1 for row in rows.values()
    )
    assert "| spvcnn |" in (out / "pointcloud.md").read_text()


def check_mcu_memory(report: Report, out: Path) -> None:
    rows = report["rows"]
    assert [row["model"] for row in rows] == ["mcunet", "mobilenet_v2"]
    assert all(row["in_place_bytes"] <= row["layer_by_layer_bytes"] for row in rows)
    assert all(row["patch_based_bytes"] < row["in_place_bytes"] for row in rows)
    assert all(row["patch_mac_overhead"] <= 0.3 for row in rows)
    for row in rows:
        assert row["tflm"] is None or (row["tflm"]["equal_outputs"] and row["tflm"]["head"] > 0)
    assert "TFLM kB (planned + persistent)" in (out / "mcu_memory.md").read_text()


def check_mcu_codegen(report: Report, out: Path) -> None:
    (row,) = report["rows"]
    assert row["host_differ"] == 0 and row["checked_inputs"] == 8
    assert row["qemu_differ"] in (0, None)  # None: no Cortex-M toolchain or QEMU here
    assert row["code_arena_bytes"] == row["planner_arena_bytes"]
    if row["image"] is not None:
        assert row["image"]["arena"] == row["code_arena_bytes"]
        assert row["image"]["flash"] >= row["constants_bytes"]
    assert 0.0 <= row["host_top1_vs_ort_int8"] <= 1.0
    assert "| mobilenet_v2 | 0.35 | 1x32x32 |" in (out / "mcu_codegen.md").read_text()


def check_autoquant(report: Report, out: Path) -> None:
    rows = report["rows"]
    assert {row["policy"] for row in rows} == {
        "uniform", "random", "greedy-measured", "knapsack-measured", "knapsack-hawq"
    }  # fmt: skip
    for row in rows:
        assert row["size_bytes"] is None or row["size_bytes"] <= row["budget_bytes"]
        assert 0.0 <= row["accuracy"] <= 1.0
    assert report["summary"]["cases"] == 2
    assert "| resnet8 | 0 | 3-bit size" in (out / "autoquant.md").read_text()


def check_engines(report: Report, out: Path) -> None:
    speed = [row for row in report["rows"] if row["part"] == "speed"]
    engines = list(dict.fromkeys(row["engine"] for row in speed))
    assert set(engines) | {key.split(" in ")[1] for key in report["summary"]["skipped"]} == set(
        report["config"]["engines"]
    )
    for engine in engines:
        mine = {(r["precision"], r["quantizer"], r["batch_size"]) for r in speed
                if r["engine"] == engine}  # fmt: skip
        assert {("fp32", "-", 1), ("int8", "mobiledl", 1), ("int8", "mobiledl", 2)} <= mine
    accuracy = [row for row in report["rows"] if row["part"] == "accuracy"]
    assert [row["engine"] for row in accuracy] == engines
    assert all(row["fp32_parity"] <= 1e-4 and row["int8_agreement"] >= 0.99 for row in accuracy)
    assert report["summary"]["resnet20_b1"]["ours_vs_fastest_fp32"] > 0
    assert "| resnet20, batch 1 |" in (out / "engines.md").read_text()


def check_nlp_minilm(report: Report, out: Path) -> None:
    rows = {row["variant"]: row for row in report["rows"]}
    assert {"fp32", "int8", "heads 75%", "tokens cascade"} <= set(rows)
    assert rows["fp32"]["rt-sentiment_cosine"] == pytest.approx(1.0)
    assert rows["int8"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert rows["heads 75%"]["size_bytes"] < rows["fp32"]["size_bytes"]
    for row in rows.values():
        assert 0 <= row["sms-spam_test"] <= 1 and row["latency"]["8"]["median_ms"] > 0
    assert "| tokens cascade |" in (out / "nlp_minilm.md").read_text()


slow = pytest.mark.slow
CASES: list[Any] = [
    pytest.param("prune_finegrained", (), check_prune_finegrained),
    pytest.param("training_memory", (), check_training_memory),
    pytest.param("distill", (), check_distill),
    pytest.param("deep_compression", (), check_deep_compression),
    pytest.param("engine_overhead", ("--repeats", "3"), check_engine_overhead, marks=slow),
    pytest.param("nas_latency_predictor", (), check_nas_latency_predictor),
    pytest.param("ondevice_transfer", (), check_ondevice_transfer, marks=slow),
    pytest.param("quantize_speed", (), check_quantize_speed, marks=slow),
    pytest.param("engines", (), check_engines, marks=slow),
    pytest.param("quantize_ptq", (), check_quantize_ptq, marks=slow),
    pytest.param("quantize_storage", (), check_quantize_storage, marks=slow),
    pytest.param("factorize", ("--threads", "1", "--no-comparison"), check_factorize),
    pytest.param("prune_channel", ("--models", "resnet20"), check_prune_channel, marks=slow),
    pytest.param("nas_supernet", ("--no-ray",), check_nas_supernet, marks=slow),
    pytest.param("video_tsm", ("--latency",), check_video_tsm, marks=slow),
    pytest.param("sparse_conv", (), check_sparse_conv),
    pytest.param("pointcloud", (), check_pointcloud),
    pytest.param("autoquant", (), check_autoquant),
    pytest.param("mcu_memory", (), check_mcu_memory, marks=slow),
    pytest.param("mcu_codegen", (), check_mcu_codegen, marks=slow),
    pytest.param("nlp_minilm", (), check_nlp_minilm, marks=slow),
]


def test_every_benchmark_has_a_smoke_case() -> None:
    assert {case.values[0] for case in CASES} == set(available())


@pytest.mark.parametrize(("name", "extra", "check"), CASES)
def test_smoke(
    name: str, extra: tuple[str, ...], check: Callable[[Report, Path], None], tmp_path: Path
) -> None:
    check(run(name, tmp_path, *extra), tmp_path)


@pytest.mark.slow
def test_nas_supernet_resumes_finished_stages(tmp_path: Path, capsys) -> None:
    first = run("nas_supernet", tmp_path, "--no-ray")
    capsys.readouterr()
    second = run("nas_supernet", tmp_path, "--no-ray")
    log = capsys.readouterr().err
    for stage in ("supernet run 0", "supernet run 1", "latency_model", "scratch", "mobilenet_v2"):
        assert f"{stage}: done before" in log
    assert second["rows"] == first["rows"]
    assert second["summary"]["latency_model"] == first["summary"]["latency_model"]
