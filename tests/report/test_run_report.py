"""The run report is one self-contained HTML file whose plots render in headless Chromium
without console errors."""

import re
from pathlib import Path

import pytest
import torch

from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.profile import Measurement, profile_model
from mobiledl.report.run import (
    RunReport,
    Sensitivity,
    StepRow,
    load_report_data,
    pareto_indices,
    save_report_data,
    write_run_report,
)

FACTORIZE_INFO = {"layers": {"features.1.conv1.conv": {"method": "tucker2", "ranks": [8, 8]}}}


def sample_report() -> RunReport:
    example = torch.randn(1, 1, 8, 8)
    before = create_model("resnet8", 10, 1, 8)
    after = create_model("resnet8", 10, 1, 8, width_mult=0.5)
    steps = [
        StepRow(
            kind,
            1.5,
            Measurement(name, accuracy, 70_000, macs, bytes_, 12_288, latency, latency * 1.2),
            info,
        )
        for name, kind, accuracy, macs, bytes_, latency, info in [
            ("train", "train", 0.97, 760_000, 300_000, 0.09, {}),
            ("factorize", "factorize", 0.90, 380_000, 200_000, 0.06, FACTORIZE_INFO),
            ("finetune", "finetune", 0.96, 380_000, 200_000, 0.06, {"kd": {"alpha": 0.9}}),
            ("quantize", "quantize", 0.96, 380_000, 50_000, 0.04, {}),
        ]
    ]  # fmt: skip
    sensitivity = Sensitivity(
        0.97, [0.5, 0.9], {"features.0.conv": [0.96, 0.5], "classifier": [0.97, 0.9]}, "test"
    )
    return RunReport(
        title="run <test> & report",
        description="a synthetic run",
        steps=steps,
        layers_before=profile_model(before, example).layers,
        layers_after=profile_model(after, example).layers,
        sensitivity=sensitivity,
        layer_times={
            "train": {"features.0.conv": 0.02, "features.3.conv2.conv": 0.03, "Quantize": 0.0},
            "quantize": {"features.0.conv": 0.01, "features.3.conv2.conv": 0.01, "Quantize": 0.004},
        },
    )


def test_report_is_self_contained(tmp_path: Path) -> None:
    path = write_run_report(tmp_path / "report.html", sample_report())
    html = path.read_text(encoding="utf-8")
    assert html.count("<svg") == 6  # latency, size, blocks, layers, engine time, sensitivity
    assert "run &lt;test&gt; &amp; report" in html
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html)  # nothing to fetch
    assert "<script" not in html
    assert "<td>features.0.conv</td><td>Conv2d</td><td>16 -&gt; 8</td>" in html
    assert "<th>quantize (ms)</th>" in html
    for heading in ("Steps", "Trade-offs", "Per-layer profile", "Factorization (factorize)"):
        assert f"<h2>{heading}</h2>" in html


def test_report_renders_in_headless_chromium(tmp_path: Path, chromium) -> None:
    page = write_run_report(tmp_path / "report.html", sample_report())
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('boom')</script></body></html>")
    check = chromium.run("--dump-dom", broken.as_uri())
    assert chromium.console_errors(check.stderr), "the console check must see a deliberate error"

    result = chromium.run("--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert dom.count("<svg") == 6
    assert len(re.findall(r"<path", dom)) > 50  # the plots' lines, bars and markers
    assert dom.count("<tr>") >= 1 + 4  # the step table at least
    assert not chromium.console_errors(result.stderr), chromium.console_errors(result.stderr)

    shot = tmp_path / "report.png"
    chromium.run(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000  # a real picture, not a blank page


def test_pareto_front_keeps_only_undominated_steps() -> None:
    costs = [4.0, 2.0, 2.0, 1.0, 3.0, 0.5]
    accuracy = [0.99, 0.97, 0.95, 0.90, 0.96, float("nan")]
    assert pareto_indices(costs, accuracy) == [3, 1, 0]


def test_report_data_round_trips_to_the_same_page(tmp_path: Path) -> None:
    report = sample_report()
    data = save_report_data(tmp_path / "report.json", report)
    first = write_run_report(tmp_path / "a.html", report).read_text(encoding="utf-8")
    again = write_run_report(tmp_path / "b.html", load_report_data(data))
    assert again.read_text(encoding="utf-8") == first


@pytest.mark.parametrize(
    ("text", "match"),
    [("{", "not a JSON report"), ('{"version": 7}', "not a mobiledl report"),
     ('{"version": 1, "title": "t"}', "incomplete")],
)  # fmt: skip
def test_bad_report_data_is_one_clear_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_report_data(path)
