"""notebooks/explore.ipynb runs top to bottom on the committed results, so it cannot rot."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT


@pytest.mark.slow
def test_explore_notebook_executes_on_committed_results(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    nb = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/html", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs
    )
    gate = json.loads((ROOT / "metrics" / "gate.json").read_text())
    verdict = "gate passed" if gate["passed"] else f"gate FAILED: {gate['failures']} check(s)"
    assert "executorch_xnnpack_int8" in text and verdict in text  # the committed verdict, whichever it is
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # four figures rendered
    assert "onnx_qdq_int8_per_tensor_aware" in text and "McNemar" in text  # the saved workload runs, with their statistics
