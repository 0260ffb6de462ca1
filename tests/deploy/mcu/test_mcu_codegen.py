"""The generated C: bit-exact with the integer reference on the host (gcc) and on a Cortex-M7
under QEMU, its static arena exactly the planner's peak, and the CLI around it."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

from mobiledl.cli.main import main
from mobiledl.deploy.mcu import plan_memory, quantize_input, read_graph, run, search_patch
from mobiledl.deploy.mcu.codegen import (
    build,
    generate_c,
    generate_patch_c,
    image_sizes,
    read_manifest,
    run_c,
)
from mobiledl.deploy.mcu.fixedpoint import ROUNDINGS
from mobiledl.errors import UserError
from tests.deploy.mcu.conftest import random_images


def _tools_or_skip(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{missing[0]} not installed (apt-get install {' '.join(missing)})")


def _codes(graph, count: int, seed: int = 0) -> np.ndarray:
    return quantize_input(graph, random_images(graph, count, seed))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_host_build_is_bit_exact_with_the_reference(int8_onnx, tmp_path, rounding) -> None:
    _tools_or_skip("gcc", "make")
    graph = read_graph(int8_onnx("mobilenet_v2"))
    graph.rounding = rounding
    plan = plan_memory(graph, in_place_depthwise=True)
    assert plan.in_place, "the test needs in-place depthwise convs"
    project = generate_c(plan, tmp_path / "c")
    build(project.folder, "host")
    codes = _codes(graph, 24)
    outputs = run_c(project.folder, codes, "host", project.output_dtype)
    assert outputs.dtype == np.int32
    np.testing.assert_array_equal(outputs, run(graph, codes).reshape(len(codes), -1))


@pytest.mark.parametrize("name", ["resnet8", "lenet5"])
def test_residual_adds_pooling_and_fc_are_bit_exact(int8_onnx, tmp_path, name) -> None:
    _tools_or_skip("gcc", "make")
    graph = read_graph(int8_onnx(name))
    project = generate_c(plan_memory(graph), tmp_path / name)
    build(project.folder, "host")
    codes = _codes(graph, 12, seed=1)
    outputs = run_c(project.folder, codes, "host", project.output_dtype)
    np.testing.assert_array_equal(outputs, run(graph, codes).reshape(len(codes), -1))


def test_the_arena_is_the_planners_peak(int8_onnx, tmp_path) -> None:
    graph = read_graph(int8_onnx("mcunet"))
    plan = plan_memory(graph)
    project = generate_c(plan, tmp_path / "c")
    header = (project.folder / "model.h").read_text()
    assert re.search(rf"#define MDL_ARENA_BYTES {plan.arena_bytes}\b", header)
    source = (project.folder / "model.c").read_text()
    assert "malloc" not in source and source.count("mdl_depthwise_in_place(") == len(plan.in_place)
    manifest = read_manifest(project.folder)
    assert manifest["arena_bytes"] == plan.arena_bytes and manifest["output"]["dtype"] == "int32"


@pytest.mark.slow
def test_cortex_m7_under_qemu_is_bit_exact(int8_onnx, tmp_path) -> None:
    _tools_or_skip("make", "arm-none-eabi-gcc", "qemu-system-arm")
    graph = read_graph(int8_onnx("mcunet"))
    plan = plan_memory(graph)
    project = generate_c(plan, tmp_path / "c")
    build(project.folder, "cortex-m7")
    codes = _codes(graph, 8)
    outputs = run_c(project.folder, codes, "cortex-m7", project.output_dtype)
    np.testing.assert_array_equal(outputs, run(graph, codes).reshape(len(codes), -1))
    sizes = image_sizes(project.folder / "model.map")
    assert sizes.arena == plan.arena_bytes and sizes.bss >= plan.arena_bytes
    assert sizes.flash >= graph.flash_bytes


def test_an_op_without_a_kernel_is_named(int8_onnx, tmp_path) -> None:
    graph = read_graph(int8_onnx("lenet5"))
    graph.ops[2] = dataclasses.replace(graph.ops[2], kind="softmax")
    with pytest.raises(UserError, match=f"layer '{graph.ops[2].layer}': op 'softmax' has no C"):
        generate_c(plan_memory(graph), tmp_path / "c")


def test_cli_codegen_and_run(int8_onnx, tmp_path, capsys) -> None:
    _tools_or_skip("gcc", "make")
    model = int8_onnx("mcunet")
    folder = tmp_path / "project"
    assert main(["mcu", "codegen", str(model), "--out", str(folder), "--json"]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["arena_bytes"] == plan_memory(read_graph(model)).arena_bytes
    assert generated["image"] is None and (folder / "model_host").exists()
    inputs = tmp_path / "x.npy"
    np.save(inputs, random_images(read_graph(model), 6))
    assert main(["mcu", "run", str(folder), "--input", str(inputs), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["inputs"] == 6 and result["accuracy"] is None
    assert result["reference"] == {"checked": True, "bit_exact": True, "inputs_that_differ": 0}
    assert main(["mcu", "run", str(folder), "--task", "digits", "--limit", "5", "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0


def test_cli_run_errors_are_one_line(int8_onnx, tmp_path, capsys) -> None:
    assert main(["mcu", "run", str(tmp_path), "--input", "x.npy"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "not a generated C project" in error
    folder = tmp_path / "c"
    generate_c(plan_memory(read_graph(int8_onnx("lenet5"))), folder)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 5, 5), np.float32))
    assert main(["mcu", "run", str(folder), "--input", str(wrong)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "inputs of shape (3, 5, 5)" in error
    np.save(wrong, np.full((1, *read_manifest(folder)["input"]["shape"][1:]), np.nan))
    assert main(["mcu", "run", str(folder), "--input", str(wrong)]) == 2
    assert "NaN" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet8"])
def test_patch_based_c_is_bit_exact(int8_onnx, tmp_path, name) -> None:
    _tools_or_skip("gcc", "make")
    graph = read_graph(int8_onnx(name))
    patch = search_patch(graph, 0.3)
    assert patch is not None and patch.grid[0] > 1
    project = generate_patch_c(graph, patch.split, patch.grid, tmp_path / "c")
    assert project.arena_bytes == patch.peak_bytes < plan_memory(graph).arena_bytes
    build(project.folder, "host")
    codes = _codes(graph, 10, seed=2)
    outputs = run_c(project.folder, codes, "host", project.output_dtype)
    np.testing.assert_array_equal(outputs, run(graph, codes).reshape(len(codes), -1))
    source = (project.folder / "model.c").read_text()
    assert source.count("mdl_crop(") == patch.grid[0] * patch.grid[1]


def test_cli_codegen_patch_auto(int8_onnx, tmp_path, capsys) -> None:
    _tools_or_skip("gcc", "make")
    model = str(int8_onnx("mobilenet_v2"))
    argv = ["mcu", "codegen", model, "--out", str(tmp_path / "c"), "--patch", "auto", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    patch = search_patch(read_graph(model), 0.3)
    assert result["arena_bytes"] == patch.peak_bytes and result["patch"]["grid"] == [*patch.grid]
    graph = read_graph(model)
    assert result["frame_buffer_bytes"] == graph.tensors[graph.input].nbytes
