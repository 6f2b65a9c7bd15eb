"""Arm numerics without an Arm machine: the bench bundle's artifacts run by arm64 builds of their runtimes under qemu.

Each artifact runs in `chroot ROOT qemu-aarch64 -cpu MODEL` inside the arm64 root (edgequant.device.armroot): ONNX
artifacts through the bundle's own runner under the root's python3, `.pte` programs through `pte_logits`.
The logits come back and are scored here against the bundle's labels, FP32's answers and this host's own
kernels; qemu's log of the instructions it translated says which kernel path ran. An emulator's speed says
nothing of the CPU it emulates: the record (edgequant.fleet.numerics) has no timing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgequant.device.armroot import GUEST, SOURCE, SUITE, build
from edgequant.device.armtrace import int8_path, read_in_asm
from edgequant.fleet.numerics import LABEL

RUNS_ON = (".onnx", ".pte")  # the root's python3 with onnxruntime; pte_logits
GUEST_TIMEOUT_S = 1800  # one artifact's 10,000 images at qemu's pace, with room


class Guest:
    """Commands in the arm64 root on one emulated CPU model."""

    def __init__(self, rootfs: Path, cpu: str):
        self.rootfs, self.cpu = rootfs, cpu
        self.env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": f"{GUEST}/site"}

    def host_path(self, guest: str) -> Path:
        """Where a guest path lies here, refusing one that a link would lead out of the root."""
        path = (self.rootfs / guest.lstrip("/")).resolve()
        if not path.is_relative_to(self.rootfs.resolve()):
            raise RuntimeError(f"{guest} leads out of the arm64 root {self.rootfs}")
        return path

    def run(self, *argv: str, trace: str | None = None) -> str:
        """Run argv under qemu; with `trace`, qemu logs every block it translates (the kernels' instructions) there."""
        log = ["-d", "in_asm", "-D", trace] if trace else []
        cmd = [shutil.which("chroot"), str(self.rootfs), "/usr/bin/qemu-aarch64", "-cpu", self.cpu, *log, *argv]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=GUEST_TIMEOUT_S)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
            raise RuntimeError(f"{' '.join(argv[:2])} failed on the emulated {self.cpu} ({proc.returncode}): {' | '.join(lines)}")
        return proc.stdout

    def describe_cpu(self) -> dict:
        """The emulated CPU as the guest sees it; its sysfs CPU lists are laid in the root for cpuinfo, which needs them."""
        line = self.run(f"{GUEST}/bin/pte_logits", "--cpu").strip()
        fields = dict(item.split("=", 1) for item in line.split())
        cpus = int(fields["cpus"])
        system = self.host_path("/sys/devices/system/cpu")
        system.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present", "online"):
            (system / name).write_text(f"0-{cpus - 1}\n" if cpus > 1 else "0\n")
        for i in range(cpus):
            ident = system / f"cpu{i}/regs/identification"
            ident.mkdir(parents=True, exist_ok=True)
            (ident / "midr_el1").write_text(f"0x{int(fields['midr'], 16):016x}\n")
        facts = {"midr": fields["midr"], "hwcap": fields["hwcap"], "hwcap2": fields["hwcap2"], "cpus": cpus}
        return facts | {key: int(value) for key, value in fields.items() if key.endswith("_vl_bytes")}


def score(logits: np.ndarray, labels: np.ndarray, expected: np.ndarray) -> dict:
    """The bench runner's two accuracy figures, from logits."""
    predictions = logits.argmax(1)
    return {
        "accuracy_pct": 100.0 * float((predictions == labels).mean()),
        "agreement_with_fp32_pct": 100.0 * float((predictions == expected).mean()),
    }


def host_logits(model: Path, batch: int, images: np.ndarray) -> np.ndarray | None:
    """The same artifact on this machine's own kernels, through the bench runner; None where its runtime is absent."""
    from edgequant.device.arm_guest import logits
    from edgequant.device.run_bench import RUNNERS, pad

    try:
        return logits(RUNNERS[model.suffix](model, 1), pad, batch, images)
    except ImportError:
        return None


def vs_host(arm: np.ndarray, host: np.ndarray | None) -> dict | None:
    if host is None:
        return None
    return {"agreement_pct": 100.0 * float((arm.argmax(1) == host.argmax(1)).mean()), "logit_max_abs_diff": float(np.abs(arm - host).max())}


def artifacts(bundle: Path, manifest: dict) -> dict[str, tuple[int, str]]:
    """Each method's artifact at its largest batch (the one the bench runner scores accuracy with), checked to lie in the bundle."""
    chosen = {}
    for name, m in manifest["methods"].items():
        files = {int(bs): f for bs, f in m["files"].items()}
        batch, file = max(files), files[max(files)]
        path = Path(file)
        if path.is_absolute() or ".." in path.parts or path.suffix not in RUNS_ON or not (bundle / path).is_file():
            raise ValueError(f"{bundle / 'manifest.json'}: methods.{name} names {file!r}, not a .onnx or .pte file of the bundle")
        chosen[name] = (batch, file)
    return chosen


def measure(bundle: Path, cache: Path, cpu: str) -> dict:
    """Every ONNX and ExecuTorch artifact of the bundle on the emulated CPU: the numerics-only record."""
    from edgequant.fleet.numerics import validate
    from edgequant.measure.machine import name_of, probe

    manifest_path, inputs_path = bundle / "manifest.json", bundle / "inputs.npz"
    for path in (manifest_path, inputs_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing; build the bundle first (`dvc repro bundle`)")
    manifest = json.loads(manifest_path.read_text())
    chosen = artifacts(bundle, manifest)
    data = np.load(inputs_path)
    images, labels, expected = data["images"], data["labels"], data["fp32_predictions"]
    rootfs, versions = build(cache)
    guest = Guest(rootfs, cpu)
    cpu_facts = guest.describe_cpu()
    work = guest.host_path(f"{GUEST}/work")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(bundle, work / "bundle")
    shutil.copy(SOURCE / "arm_guest.py", work / "arm_guest.py")
    np.save(work / "images.npy", images)
    images.astype("<f4").tofile(work / "images.f32")
    inside = f"{GUEST}/work"
    guest.run("/usr/bin/python3", f"{inside}/arm_guest.py", "probe", f"{inside}/bundle", f"{inside}/machine.json")
    guest_view = json.loads((work / "machine.json").read_text())
    machine = guest_view["machine"]
    methods = {}
    for name, m in manifest["methods"].items():
        batch, file = chosen[name]
        if Path(file).suffix == ".pte":
            argv = [f"{GUEST}/bin/pte_logits", f"{inside}/bundle/{file}", f"{inside}/images.f32", str(len(images)), f"{inside}/out.f32"]
            guest.run(*argv, trace=f"{inside}/trace.log")
            arm = np.fromfile(work / "out.f32", "<f4").reshape(len(images), -1)
        else:
            argv = [f"{inside}/arm_guest.py", "logits", f"{inside}/bundle", f"{inside}/bundle/{file}", str(batch), f"{inside}/images.npy"]
            guest.run("/usr/bin/python3", *argv, f"{inside}/out.npy", trace=f"{inside}/trace.log")
            arm = np.load(work / "out.npy")
        kernels = read_in_asm(work / "trace.log")
        (work / "trace.log").unlink()
        methods[name] = {
            "runtime": m["runtime"],
            "precision": m["precision"],
            "baseline": m["baseline"],
            "artifact": file,
            **score(arm, labels, expected),
            "kernel_path": int8_path(kernels) if m["precision"] == "int8" else None,
            "kernels": kernels,
            "vs_host": vs_host(arm, host_logits(bundle / file, batch, images)),
        }
    for entry in methods.values():
        base = methods.get(entry["baseline"])
        entry["accuracy_drop_pp"] = base["accuracy_pct"] - entry["accuracy_pct"] if base else None
    flags = machine.get("flags", {})
    machine.update(cpu=f"QEMU arm64 {cpu}", emulated=True)
    machine["name"] = name_of(f"qemu arm64 {cpu}", flags, "aarch64")
    record = {
        "numerics_only": LABEL,
        "machine": machine,
        "emulator": {
            **{"qemu": versions.pop("qemu"), "cpu_model": cpu, **cpu_facts, "features": guest_view["features"]},
            "root": f"Debian {SUITE} arm64 (debootstrap)",
        },
        "runtimes": versions,
        "model": manifest.get("model"),
        "images": int(len(labels)),
        "methods": methods,
        "host": probe()["name"],
    }
    return validate(record, "the emulated record")


def save(record: dict, machines: Path) -> Path:
    """The row into machines/<name>/: numerics.json and a README saying how it was made."""
    from edgequant.files import atomic_dir
    from edgequant.fleet.numerics import FILE, LABEL

    name, emulator = record["machine"]["name"], record["emulator"]
    readme = (
        f"# {name}\n\n{LABEL}. The bench bundle's ONNX and ExecuTorch artifacts, run by the aarch64 builds of "
        f"onnxruntime {record['runtimes']['onnxruntime']} and executorch {record['runtimes']['executorch']} in a "
        f"{emulator['root']} root under qemu {emulator['qemu']} `-cpu {emulator['cpu_model']}`, on {record['images']} test "
        f"images. Made by `make arm-numerics` (edgequant/device/emulate.py); `kernels` counts the int8/fp instructions qemu "
        f"translated while each artifact ran, the evidence for `kernel_path`. Compared against `{record['host']}`.\n"
    )
    with atomic_dir(machines / name) as tmp:
        (tmp / FILE).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(readme)
    return machines / name


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="The bench bundle's numerics on an emulated arm64 CPU (no timing).")
    parser.add_argument("bundle", type=Path, nargs="?", help="the bundle folder the `bundle` stage writes")
    parser.add_argument("--cpu", default="max", help="qemu's CPU model: max (dot product, i8mm, SVE2, SME), cortex-a76, cortex-a53, ...")
    parser.add_argument("--cache", type=Path, default=Path(".cache/arm64"), help="where the arm64 root is built once and reused")
    parser.add_argument("--out", type=Path, default=Path("machines"), help="the fleet folder")
    parser.add_argument("--prepare-only", action="store_true", help="build the arm64 root into --cache and stop (CI, before the tests)")
    args = parser.parse_args(argv)
    if args.bundle is None and not args.prepare_only:
        parser.error("name the bundle folder, or pass --prepare-only")
    try:
        if args.prepare_only:
            rootfs, versions = build(args.cache)
            print(f"arm64 root ready: {rootfs} ({', '.join(f'{k} {v}' for k, v in versions.items())})")
            return 0
        record = measure(args.bundle, args.cache, args.cpu)
    except (ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"arm-numerics: {exc}", file=sys.stderr)
        return 1
    for name, m in record["methods"].items():
        host = f"{m['vs_host']['agreement_pct']:.2f} %" if m["vs_host"] else "not measured"
        print(f"{name}: accuracy {m['accuracy_pct']:.2f} %, agreement with FP32 {m['agreement_with_fp32_pct']:.2f} %, ", end="")
        print(f"same top-1 as {record['host']} {host}, INT8 path {m['kernel_path'] or '-'}")
    print(f"{LABEL} -> {save(record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
