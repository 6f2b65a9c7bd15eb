"""The charts draw the rows they are given: every point, every baseline pair, a colour for every runtime."""

from __future__ import annotations

import matplotlib.collections
import matplotlib.colors
import pandas as pd
import pytest

from edgequant.report import charts


def bench() -> pd.DataFrame:
    rows = [
        ("fp32", "pytorch", "fp32", "fp32", 0.5, 98.9, 4_800_000, 2000.0),
        ("pt2e_x86", "pytorch-inductor", "int8", "fp32", 0.45, 98.8, 1_200_000, 4600.0),
        ("onnx_fp32", "onnxruntime", "fp32", "onnx_fp32", 0.27, 98.9, 4_800_000, 4100.0),
        ("onnx_qdq_int8", "onnxruntime", "int8", "onnx_fp32", 0.11, 98.7, 1_200_000, 11500.0),
        ("tflite_int8", "litert", "int8", "tflite_fp32", 0.09, 98.6, 1_100_000, 12000.0),  # a runtime with no house colour
        ("tflite_fp32", "litert", "fp32", "tflite_fp32", 0.2, 98.9, 4_700_000, 4000.0),
    ]
    columns = ["method", "runtime", "precision", "baseline", "latency_ms_p50", "accuracy_pct", "size_bytes", "throughput_ips"]
    df = pd.DataFrame(rows, columns=columns)
    df["threads"] = 1
    return pd.concat([df, df.assign(threads=2, throughput_ips=df.throughput_ips * 1.8)], ignore_index=True)


@pytest.fixture
def drawn(monkeypatch):
    figures = []
    monkeypatch.setattr(charts, "_save", lambda fig, path: figures.append(fig))
    return figures


@pytest.mark.parametrize("reference", [True, False], ids=["reference-workload", "other-workload"])
def test_tradeoff_points_and_pairs_are_the_rows_of_the_smallest_thread_count(drawn, tmp_path, reference):
    df = bench()
    charts.plot_tradeoffs(df, tmp_path / "t.png", reference)
    ax1, ax2 = drawn[0].axes
    # the reference's FP32 accuracy and dynamic INT8 size are drawn only beside the workload that reproduces it
    assert (len(ax1.lines), len(ax2.lines)) == ((1, 1) if reference else (0, 0))
    one = df[df.threads == 1].set_index("method")
    for ax, (x, y) in ((ax1, ("latency_ms_p50", "accuracy_pct")), (ax2, ("size_bytes", "throughput_ips"))):
        points = {tuple(c.get_offsets()[0]) for c in ax.collections}
        scale = 1024 if x == "size_bytes" else 1  # drawn in KB
        assert points == {(r[x] / scale, r[y]) for _, r in one.iterrows()}
        # One arrow per method that is not its own baseline, from that baseline's point to the method's.
        arrows = {(a.xy, a.xyann) for a in ax.texts if a.arrow_patch is not None}
        expected = {
            ((r[x] / scale, r[y]), (one.at[r.baseline, x] / scale, one.at[r.baseline, y])) for m, r in one.iterrows() if r.baseline != m
        }
        assert arrows == expected  # pt2e_x86 pairs with fp32 through its baseline, not its runtime's name
    colours = {matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in ax1.collections}
    assert len(colours) == df.runtime.nunique()  # litert got a colour of its own


def test_accuracy_bars_are_the_int8_drops_with_their_intervals_and_solid_only_when_significant(drawn, tmp_path):
    df = bench().assign(
        accuracy_drop_pp=lambda d: 98.9 - d.accuracy_pct,
        accuracy_drop_pp_ci95_low=lambda d: d.accuracy_drop_pp - 0.05,
        accuracy_drop_pp_ci95_high=lambda d: d.accuracy_drop_pp + 0.08,
        flips_lost=lambda d: (d.accuracy_drop_pp * 10).round() + 3,
        flips_gained=3,
        mcnemar_p=lambda d: d.accuracy_drop_pp.map(lambda drop: 0.001 if drop >= 0.25 else 0.5),
    )
    charts.plot_accuracy(df, tmp_path / "a.png")
    ax = drawn[0].axes[0]
    int8 = df[(df.threads == 1) & (df.precision == "int8")]
    bars = sorted((round(b.get_width(), 6), b.get_alpha()) for b in ax.patches)
    assert bars == sorted((round(d, 6), 1.0 if p < 0.05 else 0.35) for d, p in zip(int8.accuracy_drop_pp, int8.mcnemar_p, strict=True))
    ordered = int8.sort_values("accuracy_drop_pp")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert [label.split()[0] for label in labels] == list(ordered.method)
    assert labels[-1].endswith(f"({ordered.flips_lost.iloc[-1]:.0f} lost / 3 gained, p 0.001)")
    whiskers = sorted(
        tuple(round(x, 6) for x in (seg[0][0], seg[1][0]))
        for c in ax.collections
        if isinstance(c, matplotlib.collections.LineCollection)
        for seg in c.get_segments()
    )
    intervals = zip(ordered.accuracy_drop_pp_ci95_low, ordered.accuracy_drop_pp_ci95_high, strict=True)
    assert whiskers == sorted((round(lo, 6), round(hi, 6)) for lo, hi in intervals)


def test_speedup_bars_are_the_csv_values(drawn, tmp_path):
    df = bench().assign(throughput_speedup_vs_fp32_eager=lambda d: d.throughput_ips / 2000.0)
    charts.plot_speedups(df, tmp_path / "s.png")
    heights = sorted(round(p.get_height(), 6) for p in drawn[0].axes[0].patches if p.get_height() > 0)
    assert heights == sorted(round(v, 6) for v in df.throughput_speedup_vs_fp32_eager)


def test_layer_bars_colour_convolutions_by_kind_not_name(drawn, tmp_path):
    layers = pd.DataFrame({"layer": ["stem", "fc"], "kind": ["conv", "linear"], "macs": [3e6, 1e6], "macs_share_pct": [75.0, 25.0]})
    charts.plot_layers(layers, tmp_path / "l.png")
    bars = drawn[0].axes[0].patches
    assert [matplotlib.colors.to_hex(b.get_facecolor()) for b in bars] == ["#c44e52", "#4c72b0"]
    assert [b.get_height() for b in bars] == [3.0, 1.0]


def test_npu_bars_are_vela_cycles_per_layer_and_say_they_are_estimates(drawn, tmp_path):
    rows = [
        ("ethos-u55-128", "Conv2D", "Net/Conv2d_conv1;1", 100),
        ("ethos-u55-128", "Relu", "Net/Conv2d_conv1;1", 20),  # fused into conv1's cycles
        ("ethos-u55-128", "FullyConnected", "Net/Linear_fc1;7", 900),
        ("ethos-u85-256", "Conv2D", "Net/Conv2d_conv1;1", 40),
        ("ethos-u85-256", "FullyConnected", "Net/Linear_fc1;7", 300),
    ]
    layers = pd.DataFrame(rows, columns=["accelerator", "operator", "name", "est_cycles"])
    charts.plot_npu(layers, tmp_path / "npu.png")
    ax = drawn[0].axes[0]
    assert sorted(round(p.get_height()) for p in ax.patches if p.get_height() > 0) == [40, 120, 300, 900]
    assert "estimates, not measurements" in ax.get_title()
