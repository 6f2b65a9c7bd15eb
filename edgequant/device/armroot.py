"""The arm64 root the emulated numerics run in, built once from Debian's packages and PyPI's aarch64 wheels.

debootstrap's first stage unpacks Debian's arm64 base and python3 (no maintainer script runs, so no binfmt
handler is registered on this machine); pip unpacks the aarch64 wheels of numpy, onnxruntime and executorch
at the versions installed here; Debian's cross compiler links `pte_logits` (ExecuTorch's C++ runtime from
that wheel) for arm64; qemu-aarch64 comes from Debian 13's qemu-user package. docs/arm-numerics.md says why
each is so: Debian 12's qemu 7.2 gets XNNPACK's SME kernels wrong, and ExecuTorch's Python runtime needs
torch, whose only arm64 2.13.0 on PyPI is the CUDA build.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "bookworm"  # the arm64 root: Python 3.11, as the project's own
QEMU_SUITE = "trixie"  # qemu 10.0: see the module's docstring
MIRROR = "http://deb.debian.org/debian"
WHEELS = ("numpy", "onnxruntime", "executorch")  # at the versions installed here: pyproject.toml pins them
# pip takes --platform tags literally: every manylinux level a wheel may be tagged with is named.
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(17, 29)] + ["manylinux2014_aarch64"]
GUEST = "/opt/edgequant"  # inside the root: site-packages, the runner, the bundle being measured
TOOLS = {
    "chroot": "coreutils",
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "tar": "tar",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
}
EXECUTORCH_KEPT = ["include", "lib", "share"]  # the C++ runtime pte_logits links; the rest of the wheel is its Python side
SOURCE = Path(__file__).resolve().parent


def missing() -> str | None:
    """Why this machine cannot run the emulation, in one line; None when it can."""
    if sys.platform != "linux":
        return "the arm64 root runs under Linux only"
    if os.geteuid() != 0:
        return "chroot into the arm64 root needs root"
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"no {', '.join(absent)} (Debian: apt-get install {' '.join(sorted({TOOLS[t] for t in absent}))})"
    return None


def sh(cmd: list, *, cwd: Path | None = None, timeout: float = 1800) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{Path(str(cmd[0])).name} {' '.join(str(c) for c in cmd[1:4])} ... failed ({proc.returncode}): {tail[0]}")
    return proc.stdout


def unpack(deb: Path, root: Path, *members: str) -> None:
    """A package's files into `root`, keeping the root's /lib -> usr/lib links (merged /usr) as links."""
    deb_proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root), *members], stdin=deb_proc.stdout, capture_output=True)
    deb_proc.stdout.close()
    if deb_proc.wait() != 0 or tar.returncode != 0:
        raise RuntimeError(f"{deb.name}: could not unpack into {root}: {tar.stderr.decode().strip()[-200:]}")


def debootstrap(rootfs: Path) -> None:
    """Debian's arm64 base with python3, unpacked (first stage and the packages it downloads)."""
    if (rootfs / "usr/bin/python3").exists():
        return
    tmp = rootfs.with_name(rootfs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sh(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3", SUITE, tmp, MIRROR])
    archives = tmp / "var/cache/apt/archives"
    for name in (tmp / "debootstrap/base").read_text().split():
        for deb in archives.glob(f"{name}_*.deb"):
            unpack(deb, tmp)
    for deb in archives.glob("*.deb"):
        deb.unlink()
    python = os.readlink(tmp / "usr/bin/python3").removeprefix("python")
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":  # Debian compiles it in a maintainer script, which never ran
        sh([sys.executable, "-m", "compileall", "-q", "-j0", "-d", f"/usr/lib/python{python}", tmp / f"usr/lib/python{python}"])
    if (tmp / "proc").is_symlink():  # the first stage links /proc to the host's, which a chroot would loop on
        (tmp / "proc").unlink()
    (tmp / "proc").mkdir(exist_ok=True)
    os.replace(tmp, rootfs)


def apt_options(apt: Path) -> list[str]:
    """apt-get on a private list of Debian's sources, so fetching a package changes nothing on this machine."""
    return [
        *("-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null"),
        *("-o", "Dir::Etc::PreferencesParts=/dev/null", "-o", f"Dir::State::Lists={apt / 'lists'}"),
        *("-o", f"Dir::Cache={apt / 'cache'}", "-o", "APT::Sandbox::User=root", "-o", "Acquire::Languages=none"),
    ]


def fetch_qemu(cache: Path) -> Path:
    """Debian 13's static qemu-aarch64, taken from its qemu-user package."""
    binary = cache / "qemu-aarch64"
    if binary.exists():
        return binary
    apt = cache / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb {MIRROR} {QEMU_SUITE} main\n")
    sh(["apt-get", *apt_options(apt), "update"])
    sh(["apt-get", *apt_options(apt), "download", "qemu-user"], cwd=apt)
    (deb,) = apt.glob("qemu-user_*.deb")
    out = apt / "unpacked"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    unpack(deb, out, "./usr/bin/qemu-aarch64")
    os.replace(out / "usr/bin/qemu-aarch64", binary)
    shutil.rmtree(apt)  # the package lists too: the binary is all that is kept
    return binary


def install_wheels(rootfs: Path) -> dict[str, str]:
    """The aarch64 wheels at this environment's versions, unpacked into the root's site directory."""
    versions = {name: importlib.metadata.version(name).split("+")[0] for name in WHEELS}
    site, stamp = rootfs / GUEST.lstrip("/") / "site", rootfs / GUEST.lstrip("/") / "site.json"
    layout = {"wheels": versions, "executorch": EXECUTORCH_KEPT}
    if stamp.exists() and json.loads(stamp.read_text()) == layout:
        return versions
    python = os.readlink(rootfs / "usr/bin/python3").removeprefix("python")  # e.g. 3.11
    tmp = site.with_name("site.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Compiled here: the bytecode of one Python minor version is the same on every CPU, and compiling it under
    # emulation would cost each guest run seconds.
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", "--target", tmp]
    cmd += ["--python-version", python, "--implementation", "cp", "--abi", "cp" + python.replace(".", "")]
    cmd += [arg for tag in PLATFORMS for arg in ("--platform", tag)] + [f"{name}=={v}" for name, v in versions.items()]
    sh(cmd)
    for item in (tmp / "executorch").iterdir():  # its Python package imports torch, which the root has not
        if item.name not in EXECUTORCH_KEPT:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.rmtree(site, ignore_errors=True)
    os.replace(tmp, site)
    stamp.write_text(json.dumps(layout) + "\n")
    return versions


def build_runner(rootfs: Path, executorch: str) -> None:
    """pte_logits for arm64, against the ExecuTorch wheel's headers and libraries (its CMake config's flags)."""
    source = SOURCE / "pte_logits.cpp"
    key = hashlib.sha256(source.read_bytes() + executorch.encode()).hexdigest()
    out, stamp = rootfs / GUEST.lstrip("/") / "bin/pte_logits", rootfs / GUEST.lstrip("/") / "bin/pte_logits.key"
    if stamp.exists() and stamp.read_text() == key and out.exists():
        return
    et = rootfs / GUEST.lstrip("/") / "site/executorch"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["aarch64-linux-gnu-g++", "-std=c++17", "-O2", "-w", "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED"]
    cmd += ["-DET_USE_THREADPOOL", f"-I{et}/include", f"-I{et}/include/executorch/runtime/core/portable_type/c10", source, "-o", out]
    # The kernel and delegate libraries register themselves when loaded: kept although nothing names them.
    cmd += [f"-L{et}/lib", "-Wl,--no-as-needed", "-lexecutorch", "-lexecutorch_kernels_optimized", "-lexecutorch_backend_xnnpack"]
    cmd += ["-lexecutorch_threadpool", "-Wl,--as-needed", f"-Wl,-rpath,{GUEST}/site/executorch/lib"]
    sh(cmd)
    stamp.write_text(key)


def build(cache: Path) -> tuple[Path, dict[str, str]]:
    """The arm64 root under `cache` (made once, then reused): its path and the runtime versions in it."""
    reason = missing()
    if reason:
        raise RuntimeError(f"cannot build the arm64 root: {reason}")
    cache = cache.resolve()  # apt and chroot run from other directories
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = cache / "rootfs"
    debootstrap(rootfs)
    qemu = fetch_qemu(cache)
    inside = rootfs / "usr/bin/qemu-aarch64"
    if not inside.exists() or inside.stat().st_size != qemu.stat().st_size:
        shutil.copy2(qemu, inside)
    versions = install_wheels(rootfs)
    build_runner(rootfs, versions["executorch"])
    versions["qemu"] = sh([qemu, "--version"]).splitlines()[0].removeprefix("qemu-aarch64 version ")
    return rootfs, versions
