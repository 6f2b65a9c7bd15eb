"""Plots people would rather look at than read: training curve, trade-offs, MACs and SQNR per layer, time per op."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from edgequant.files import atomic_path  # noqa: E402
from edgequant.measure.ops import conv_gmacs, ms_by_kind  # noqa: E402
from edgequant.quantize.precisions import PRECISIONS  # noqa: E402
from edgequant.report.reference import REFERENCE  # noqa: E402

RUNTIME_COLORS = {"pytorch": "#4C72B0", "pytorch-inductor": "#8172B3", "executorch-xnnpack": "#DD8452", "onnxruntime": "#55A868"}


def runtime_colors(runtimes) -> dict[str, str]:
    """A colour per runtime: the house colours, then a palette for runtimes added since."""
    extra = sorted(set(runtimes) - set(RUNTIME_COLORS))
    palette = sns.color_palette("dark", len(extra)).as_hex() if extra else []
    return {**RUNTIME_COLORS, **dict(zip(extra, palette, strict=True))}


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def plot_training(history: pd.DataFrame, path: Path, reference: bool) -> None:
    """Loss and test accuracy per epoch; on the reference workload, the reference's figures beside them."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(history["epoch"], history["train_loss"], "o-", label="edgequant (train loss)")
    if reference:
        ref = REFERENCE["train_loss_per_epoch"]
        ax1.plot(range(1, len(ref) + 1), ref, "s--", mfc="none", color="gray", label="reference")
    ax1.set(xlabel="epoch", ylabel="mean training loss", title="Training loss", yscale="log")
    ax1.legend()
    ax2.plot(history["epoch"], history["test_accuracy_pct"], "o-", color="#55A868", label="edgequant (FP32 test)")
    if reference:
        ax2.axhline(REFERENCE["fp32_accuracy_pct"], ls="--", color="gray", label=f"reference {REFERENCE['fp32_accuracy_pct']} %")
    ax2.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Test accuracy")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    _save(fig, path)


def _scatter_pairs(ax: plt.Axes, df: pd.DataFrame, x: str, y: str) -> None:
    """One point per method; FP32 → INT8 of the same runtime joined by an arrow so pairs read at a glance."""
    colors = runtime_colors(df["runtime"])
    # Alternate label offsets by rank along y so neighbours (FP32 twins of similar speed) do not overprint.
    for rank, (_, row) in enumerate(df.sort_values([y, x]).iterrows()):
        ax.scatter(row[x], row[y], s=80, marker=PRECISIONS[row["precision"]].marker, color=colors[row["runtime"]], zorder=3)
        ax.annotate(row["method"], (row[x], row[y]), textcoords="offset points", xytext=(6, 6 if rank % 2 else -12), fontsize=8)
    by_name = df.set_index("method")
    for _, row in df[df["method"] != df["baseline"]].iterrows():  # each method to its own FP32 baseline
        b = by_name.loc[row["baseline"]]
        arrow = {"arrowstyle": "->", "color": colors[row["runtime"]], "alpha": 0.5}
        ax.annotate("", (row[x], row[y]), (b[x], b[y]), arrowprops=arrow)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=r) for r, c in colors.items() if r in set(df["runtime"])]
    shown = set(df["precision"])
    handles += [plt.Line2D([], [], ls="", marker=p.marker, color="gray", label=p.label) for name, p in PRECISIONS.items() if name in shown]
    ax.legend(handles=handles, fontsize=8, loc="best")


def plot_tradeoffs(bench: pd.DataFrame, path: Path, reference: bool) -> None:
    """Latency vs accuracy and throughput vs size, at the smallest thread count (the edge-device case); on the
    reference workload, dotted lines at the reference's FP32 accuracy and dynamic INT8 size."""
    t = bench["threads"].min()
    df = bench[bench["threads"] == t].copy()
    df["size_kb"] = df["size_bytes"] / 1024
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    _scatter_pairs(ax1, df, "latency_ms_p50", "accuracy_pct")
    ax1.set(
        xscale="log",
        xlabel=f"latency p50 at batch 1, {t} thread (ms, log)",
        ylabel="top-1 accuracy (%)",
        title="Latency vs accuracy (up-left is better)",
    )
    acc = list(df["accuracy_pct"])
    if reference:
        ax1.axhline(REFERENCE["fp32_accuracy_pct"], ls=":", color="gray", label="reference FP32")
        acc.append(REFERENCE["fp32_accuracy_pct"])
    ax1.set_ylim(min(acc) - 0.15, max(acc) + 0.15)  # tenths of a point matter here; autoscale hides them
    _scatter_pairs(ax2, df, "size_kb", "throughput_ips")
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="artifact size (KB, log)",
        ylabel=f"throughput at batch 256, {t} thread (img/s, log)",
        title="Throughput vs size (up-left is better)",
    )
    if reference:
        ax2.axvline(REFERENCE["dynamic_int8_size_bytes"] / 1024, ls=":", color="gray")
    for ax in (ax1, ax2):
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _save(fig, path)


def plot_accuracy(bench: pd.DataFrame, path: Path) -> None:
    """What each INT8 method costs in accuracy, with its exact 95 % interval: solid bars are significant (McNemar
    p < 0.05, exactly the intervals clear of zero); each label gives the test images lost / gained against FP32."""
    df = bench[(bench["threads"] == bench["threads"].min()) & (bench["precision"] == "int8")].sort_values("accuracy_drop_pp")
    fig, ax = plt.subplots(figsize=(12, 0.42 * max(len(df), 2) + 1.6))
    colors = runtime_colors(df["runtime"])
    for i, (_, row) in enumerate(df.iterrows()):
        significant = row["mcnemar_p"] < 0.05
        ax.barh(i, row["accuracy_drop_pp"], color=colors[row["runtime"]], alpha=1.0 if significant else 0.35)
        drop, low, high = row["accuracy_drop_pp"], row["accuracy_drop_pp_ci95_low"], row["accuracy_drop_pp_ci95_high"]
        ax.errorbar(drop, i, xerr=[[drop - low], [high - drop]], color="k", capsize=3, lw=1)
    labels = [f"{r.method}  ({r.flips_lost:.0f} lost / {r.flips_gained:.0f} gained, p {r.mcnemar_p:.2g})" for r in df.itertuples()]
    ax.set_yticks(range(len(df)), labels, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    lo, hi = min(0.0, df["accuracy_drop_pp_ci95_low"].min()), max(0.0, df["accuracy_drop_pp_ci95_high"].max())
    pad = 0.06 * ((hi - lo) or 0.1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set(
        xlabel="top-1 accuracy lost against FP32 (pp, with its 95 % interval; negative is a gain)",
        title="What INT8 costs in accuracy (solid: significant, McNemar p < 0.05)",
    )
    _save(fig, path)


def plot_speedups(bench: pd.DataFrame, path: Path) -> None:
    """Throughput speed-up over FP32 eager per method and thread count: the headline number."""
    fig, ax = plt.subplots(figsize=(10, 4))
    sns.barplot(data=bench, x="method", y="throughput_speedup_vs_fp32_eager", hue="threads", ax=ax, palette="Blues")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(ylabel="× FP32 eager throughput (batch 256)", xlabel="", title="INT8 speed-up per runtime, same machine, same run")
    for c in ax.containers:
        ax.bar_label(c, fmt="%.1f×", fontsize=7)
    ax.tick_params(axis="x", rotation=20)
    _save(fig, path)


def plot_layers(layers: pd.DataFrame, path: Path) -> None:
    """MACs per layer (why dynamic INT8 on Linear layers cannot help) and SQNR per layer (where precision goes)."""
    sqnr_cols = [c for c in layers.columns if c.startswith("sqnr_db_")]
    fig, axes = plt.subplots(1, 2 if sqnr_cols else 1, figsize=(12 if sqnr_cols else 6, 4), squeeze=False)
    ax = axes[0][0]
    colors = ["#C44E52" if kind == "conv" else "#4C72B0" for kind in layers["kind"]]
    bars = ax.bar(layers["layer"], layers["macs"] / 1e6, color=colors)
    ax.bar_label(bars, labels=[f"{s:.1f} %" for s in layers["macs_share_pct"]], fontsize=8)
    ax.set(ylabel="MMAC per image", title="Compute per layer: convs (red) stay FP32 under dynamic INT8")
    if sqnr_cols:
        long = layers.melt(id_vars="layer", value_vars=sqnr_cols, var_name="method", value_name="sqnr_db")
        long["method"] = long["method"].str.removeprefix("sqnr_db_")
        sns.barplot(data=long, x="layer", y="sqnr_db", hue="method", ax=axes[0][1])
        axes[0][1].set(ylabel="SQNR vs FP32 (dB, higher is better)", title="Per-layer SQNR of static INT8 methods")
        axes[0][1].legend(fontsize=8)
    _save(fig, path)


KIND_COLORS = {
    "conv": "#C44E52",
    "fully connected": "#4C72B0",
    "max pool": "#8172B3",
    "ReLU": "#64B5CD",
    "layout & quantize": "#CCB974",
    "other": "#B0B0B0",
}


def plot_ops(ops: pd.DataFrame, path: Path) -> None:
    """Time of one batch split by kind of operator, per method: where INT8 pays off and what it leaves.

    Each bar is labelled with the GMAC/s its convolutions reach, the number to hold against the peak.
    """
    fig, ax = plt.subplots(figsize=(11, 0.45 * max(ops["method"].nunique(), 2) + 2.0))
    if ops.empty:
        ax.text(0.5, 0.5, "no per-operator profile (benchmark.profile_runs is 0)", ha="center", transform=ax.transAxes)
        batch, threads = "?", "?"
    else:
        batch, threads = ops["batch"].iloc[0], ops["threads"].iloc[0]
        by_kind = pd.DataFrame.from_dict(ms_by_kind(ops.to_dict("records")), orient="index")
        by_kind = by_kind.loc[:, by_kind.sum() > 0]  # kinds no method spends time in stay out of the legend
        by_kind.plot.barh(stacked=True, ax=ax, color=[KIND_COLORS[k] for k in by_kind.columns], width=0.7)
        for i, (_, row) in enumerate(by_kind.iterrows()):
            gmacs = conv_gmacs(int(batch), row.get("conv", 0.0), int(ops["conv_macs_per_image"].iloc[0]))
            conv = f", conv {gmacs:.0f} GMAC/s" if gmacs else ""
            ax.annotate(f" {row.sum():.1f} ms{conv}", (row.sum(), i), va="center", fontsize=8)
        ax.set_xlim(0, by_kind.sum(axis=1).max() * 1.3)
        ax.legend(fontsize=8, ncol=len(by_kind.columns), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.set(
        xlabel=f"ms per batch-{batch} call, {threads} thread (each runtime's own profiler)",
        ylabel="",
        title="Where the time goes: operators by kind",
    )
    _save(fig, path)


def plot_npu(layers: pd.DataFrame, path: Path) -> None:
    """Vela's estimated cycles per layer on each Ethos-U: compiler estimates, kept apart from every timing."""
    df = layers.copy()
    df["layer"] = df["name"].str.extract(r"_(conv\d+|fc\d+)", expand=False).fillna(df["operator"])
    df = df.groupby(["accelerator", "layer"], sort=False, as_index=False)["est_cycles"].sum()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    sns.barplot(data=df, x="layer", y="est_cycles", hue="accelerator", ax=ax, palette="muted")
    for c in ax.containers:
        ax.bar_label(c, fmt="%.0f", fontsize=7)
    ax.set(ylabel="estimated cycles per image", xlabel="", title="Ethos-U per layer: Vela compiler estimates, not measurements")
    _save(fig, path)
