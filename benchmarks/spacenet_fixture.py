"""Check geovision's object matching against solaris's SpaceNet fixture (kept outside the project).

solaris (tests/test_eval/evaluator_test.py) expects, for the Atlanta gt/pred fixture at IoU 0.5:
TruePos 8, FalsePos 20, FalseNeg 20, precision = recall = F1 = 0.2857142857142857.

    python benchmarks/spacenet_fixture.py [--data ../shared/data]

Prints one JSON line and exits 1 if any figure differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"tp": 8, "fp": 20, "fn": 20, "precision": 0.2857142857142857, "recall": 0.2857142857142857,
            "f1": 0.2857142857142857}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)

    import geovision.workflows.evaluate as ev

    d = args.data / "spacenet4_atlanta_buildings_solaris"
    result = ev.evaluate(d / "pred.geojson", d / "gt.geojson", Path(tempfile.mkdtemp(prefix="gv-spacenet-")), iou=0.5)
    got = result.metrics["objects"]["overall"]
    record = {k: got[k] for k in EXPECTED}
    ok = all(abs(record[k] - v) < 1e-12 for k, v in EXPECTED.items())
    print(json.dumps({"fixture": "spacenet4 atlanta gt/pred", "iou": 0.5, **record, "matches_solaris": ok,
                      "out": str(result.out)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
