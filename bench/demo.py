"""``make demo``: the most complete real path the project has so far.

Today: verify the default model directory (hashes, torch vs onnxruntime parity
on a CT phantom and, where ../shared is present, a real CQ500 slice).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftlct.export.verify import verify_model_dir
from ftlct.export.weights import REPO_ROOT

MODEL = REPO_ROOT / "models" / "default"
SAMPLE = REPO_ROOT.parent / "shared" / "data" / "cq500-series" / "CT000100.dcm"


def main() -> int:
    samples = [SAMPLE] if SAMPLE.exists() else []
    report = verify_model_dir(MODEL, samples)
    for check in report.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    print("demo:", "model verified" if report.ok else "model FAILED verification")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
