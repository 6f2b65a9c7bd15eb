"""The guest side of the emulated arm64 numerics: runs inside the arm64 root with numpy and onnxruntime only.

Copied into the root beside the bundle by edgequant.device.emulate; it imports the bundle's own runner
(run_bench.py: its ONNX Runtime session and its zero-padding of the last batch) and machine probe,
and nothing of edgequant. It times nothing.

    python3 arm_guest.py probe BUNDLE OUT.json             the machine record, as the bundle's probe reads it,
                                                            and every CPU feature the guest's /proc/cpuinfo lists
    python3 arm_guest.py logits BUNDLE MODEL BATCH IMAGES.npy OUT.npy
                                                            the artifact's logits for every image
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def logits(run, pad, batch: int, images: np.ndarray) -> np.ndarray:
    """Every image's logits in batches of `batch`, the last one zero-padded as the runner pads it."""
    return np.concatenate([run(pad(images[i : i + batch], batch))[: len(images[i : i + batch])] for i in range(0, len(images), batch)])


def main(argv: list[str]) -> int:
    mode, bundle = argv[0], Path(argv[1])
    sys.path.insert(0, str(bundle))  # run_bench.py and machine.py sit in the bundle
    if mode == "probe":
        from machine import probe, read_cpuinfo

        # Read, not tested for: qemu serves /proc/cpuinfo to open() alone, and the root has no /proc mounted.
        cpuinfo = Path("/proc/cpuinfo").read_text()
        features = read_cpuinfo(cpuinfo).get("Features", "").split()
        Path(argv[2]).write_text(json.dumps({"machine": probe(cpuinfo), "features": features}, indent=2) + "\n")
    elif mode == "logits":
        from run_bench import RUNNERS, pad

        model, batch, images, out = Path(argv[2]), int(argv[3]), np.load(argv[4]), argv[5]
        np.save(out, logits(RUNNERS[model.suffix](model.read_bytes(), 1, model), pad, batch, images))
    else:
        print(f"arm_guest.py: unknown mode {mode!r}: probe or logits", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
