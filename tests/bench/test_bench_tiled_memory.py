"""bench/bench_tiled_memory.py: image sizes, the extrapolation guard for whole-image runs, and the table."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("bench_tiled_memory", os.path.join(ROOT, "bench", "bench_tiled_memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_shape_is_square_with_stride_multiples(bench):
    assert bench.image_shape(1) == (1024, 1024)
    assert bench.image_shape(4) == (2048, 2048)
    assert bench.image_shape(16) == (4096, 4096)
    h, w = bench.image_shape(0.3)
    assert h % 8 == 0 and abs(h * w / 2 ** 20 - 0.3) < 0.01


@pytest.mark.parametrize("limit_gb, measured_16", [(16.0, True), (10.0, False)])
def test_whole_image_sizes_past_the_memory_guard_are_skipped(bench, monkeypatch, tmp_path, capsys, limit_gb,
                                                             measured_16):
    """Peaks of 1000 and 2000 MB at 1 and 2 MP extrapolate to 15000 MB at 16 MP: run under a 16 GB guard,
    skipped under 10 GB; tiled sizes are never skipped."""
    calls = []

    def fake_measure(path, mode, mp, tile, overlap, threads):
        calls.append((mode, mp))
        peak = 1000.0 * mp if mode == "whole" else 900.0 + mp
        return {"mode": mode, "megapixels": mp, "height": 8, "width": 8, "rss_before_mb": 800.0, "peak_mb": peak,
                "seconds": 1.0}

    monkeypatch.setattr(bench, "measure", fake_measure)
    out = tmp_path / "r.json"
    assert bench.main(["--checkpoint", "x", "--modes", "whole", "tiled", "--megapixels", "2", "1", "16",
                       "--max-whole-gb", str(limit_gb), "--out", str(out)]) == 0
    assert (("whole", 16.0) in calls) == measured_16
    assert ("tiled", 16.0) in calls
    rows = json.loads(out.read_text())["rows"]
    whole16 = next(r for r in rows if r["mode"] == "whole" and r["megapixels"] == 16)
    assert ("skipped" in whole16) == (not measured_16)
    table = capsys.readouterr().out
    assert "| tiled | 16 | 8x8 | 916 | 1.02x | 800 | 1.0 |" in table  # 916 / 901 = 1.017
