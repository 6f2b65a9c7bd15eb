"""Stage `gate`: fail `dvc repro` when a gated INT8 method misses a limit (gate.require: all) or when none passes every
check (gate.require: any), unless gate.enforce is false; the verdict is kept."""

import argparse
import json
import sys

from edgequant import params, stage
from edgequant.files import write_json
from edgequant.gate import check, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, help="combined benchmark metrics JSON")
    parser.add_argument("--out", required=True, help="output: gate verdict and every check, JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        gate = params.load(params.GateParams, "gate", args.params)
        try:
            with open(args.metrics) as f:
                metrics = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{args.metrics}: not complete JSON ({exc}); re-run `dvc repro benchmark`") from exc
        checks = check(metrics, gate)
        result = report(checks, gate.require)
        # Written before failing: the benchmark's metrics are already safe, and the verdict is the evidence.
        write_json(args.out, result)
        for c in checks:
            print(f"gate: {c.describe()}", file=sys.stdout if c.passed else sys.stderr)
        ships = ", ".join(result["shippable"]) or "none"
        if not result["passed"] and not gate.enforce:
            failed = f"{result['failures']} of {len(checks)} checks failed; passing every check: {ships}"
            return f"{failed} -> {args.out} (gate.enforce is false: recorded, not enforced)"
        if not result["passed"]:
            failed = f"{result['failures']} check(s) failed; see {args.out}."
            if gate.require == "any":
                failed = f"no candidate passes every check on this machine ({failed})"
            raise stage.StageError(f"{failed} Fix the method, or relax the limit in {args.params} if the trade-off is acceptable.")
        if result["failures"]:
            return (
                f"{result['failures']} of {len(checks)} checks failed, but {ships} pass(es) every check (gate.require: any) -> {args.out}"
            )
        return f"all {len(checks)} checks passed -> {args.out}"

    return stage.run("gate", body)


if __name__ == "__main__":
    sys.exit(main())
