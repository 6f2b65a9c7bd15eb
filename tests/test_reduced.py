"""BF16 beside FP32 in the fleet: a row per measured method, read from each machine's own run; a machine without a
row named with the reason."""

from __future__ import annotations

from edgequant.fleet import reduced

from .test_fleet import AVX2, VNNI, cells, entry, metrics

BF16_CPU = (*VNNI, "avx512_bf16")


def bf16(baseline="openvino_fp32", name="openvino_bf16"):
    """A BF16 method's record as the benchmark writes it: ratios to its own runtime's FP32 with their intervals."""
    run = {
        "throughput_speedup_vs_runtime_fp32": 4.91,
        "throughput_speedup_vs_runtime_fp32_ci95_low": 4.8,
        "throughput_speedup_vs_runtime_fp32_ci95_high": 5.02,
        "latency_speedup_vs_runtime_fp32": 2.05,
        "latency_speedup_vs_runtime_fp32_ci95_low": 1.9,
        "latency_speedup_vs_runtime_fp32_ci95_high": 2.1,
    }
    record = {"precision": "bf16", "baseline": baseline, "accuracy_pct": 98.93, "accuracy_drop_pp": 0.01, "flips_lost": 1}
    record |= {"flips_gained": 0, "accuracy_drop_pp_ci95_low": -0.0095, "accuracy_drop_pp_ci95_high": 0.01, "threads_1": run}
    return name, record


def with_methods(flags, *methods):
    m = metrics(flags, 13000, 11000)
    if "avx512_bf16" in flags:
        m["machine"]["isa"]["onednn"] = "AVX512_CORE_BF16"  # as the probe reads it on such a CPU, uncapped
    m["methods"].update(methods)
    return entry(m)


def test_a_bf16_method_is_shown_against_its_own_runtimes_fp32_with_both_intervals():
    rows, missing = reduced.collect([with_methods(BF16_CPU, bf16())])
    text = reduced.markdown(rows, missing, threads=1)
    name = entry(metrics(BF16_CPU, 1, 1))["name"]
    row = f"| `{name}` | `openvino_bf16` | `openvino_fp32` | 98.93 | +0.01 [-0.01, +0.01] | 1 / 0 | 4.91× [4.80–5.02] | 2.05× [1.90–2.10] |"
    assert row in text
    assert missing == [] and "No BF16 row" not in text


def test_a_machine_without_a_bf16_row_is_named_with_why_and_shown_in_no_row():
    lacking, unmeasured = with_methods(AVX2), with_methods(BF16_CPU)
    rows, missing = reduced.collect([lacking, unmeasured])
    text = reduced.markdown(rows, missing, threads=1)
    assert rows == [] and "| machine |" not in text
    no_instructions = "this CPU has no BF16 instructions (none of avx512_bf16, bf16 in the machine record)"
    assert f"No BF16 row for `{lacking['name']}`: {no_instructions}" in text
    assert f"No BF16 row for `{unmeasured['name']}`: this CPU has BF16 instructions, but its record holds no BF16 method" in text


def test_a_oneDNN_cap_below_bf16_is_the_reason_given():
    capped = with_methods(BF16_CPU)
    capped["metrics"]["machine"]["isa"]["onednn"] = "AVX512_CORE_VNNI"
    _, missing = reduced.collect([capped])
    assert len(missing) == 1 and "oneDNN is capped at AVX512_CORE_VNNI (ONEDNN_MAX_CPU_ISA)" in missing[0]


def test_a_fleet_of_int8_only_records_without_flags_adds_nothing():
    old = with_methods(AVX2)
    old["metrics"]["machine"] = {"cpu": "AMD EPYC", "flag_avx2": True}  # a record made before the probe: flag_* fields
    rows, missing = reduced.collect([old])
    assert rows == [] and "this CPU has no BF16 instructions" in missing[0]
    assert reduced.markdown([], [], threads=1) == ""


def test_a_record_missing_a_figure_shows_a_dash_rather_than_stopping_the_fleet():
    name, record = bf16()
    for key in ("accuracy_pct", "flips_lost", "accuracy_drop_pp_ci95_low"):
        del record[key]
    rows, missing = reduced.collect([with_methods(BF16_CPU, (name, record))])
    assert "| `openvino_fp32` | – | +0.01 | – / 0 | 4.91× [4.80–5.02] |" in reduced.markdown(rows, missing, threads=1)


def test_each_machine_is_read_at_its_smallest_thread_count():
    name, record = bf16()
    record["threads_2"] = {"throughput_speedup_vs_runtime_fp32": 9.99}  # measured too, but not the row's thread count
    machine = with_methods(BF16_CPU, (name, record))
    machine["metrics"]["peak"]["threads_2"] = machine["metrics"]["peak"]["threads_1"]
    text = reduced.markdown(*reduced.collect([machine]), threads=1)
    assert "4.91× [4.80–5.02]" in text and "9.99" not in text


def test_ratios_a_device_record_lacks_or_holds_as_text_show_a_dash_or_the_figure_alone():
    name, record = bf16()
    run = record["threads_1"]
    run["throughput_speedup_vs_runtime_fp32"] = None  # a device with no FP32 of that runtime (the bench bundle)
    run["latency_speedup_vs_runtime_fp32_ci95_low"] = "1.9"  # an imported record: records.py does not check this field
    record["accuracy_drop_pp_ci95_high"] = "0.01"
    text = reduced.markdown(*reduced.collect([with_methods(BF16_CPU, (name, record))]), threads=1)
    assert "| 98.93 | +0.01 | 1 / 0 | – | 2.05× |" in text


def test_strings_from_a_record_cannot_shift_cells():
    rows, missing = reduced.collect([with_methods(BF16_CPU, bf16(baseline="x|y\n<!-- fleet:end -->", name="a|b"))])
    text = reduced.markdown(rows, missing, threads=1)
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert [cells(line) for line in table_lines] == [len(reduced.HEAD)] * 3 and "<!--" not in text
