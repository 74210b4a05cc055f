"""Fuzz the scenario loader with mutated shipped scenarios and print what came out.

Run:  python benchmarks/fuzz_scenarios.py [--cases 100000] [--seed 1]

Every case must end in a valid scenario or a ScenarioError naming the file and a line;
anything else (another exception, an error without a line, a case slower than a
second) is counted and the first few are printed.  Figures, not assertions.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.errors import ScenarioError  # noqa: E402
from harness.scenario import load_scenario  # noqa: E402
from harness.scenario.mutate import mutate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    texts = [p.read_text() for p in sorted((ROOT / "scenarios").rglob("*.yaml"))]
    counts: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    slowest = 0.0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        for _ in range(args.cases):
            path.write_bytes(mutate(rng.choice(texts), rng).encode("utf-8", "surrogateescape"))
            t = time.monotonic()
            try:
                load_scenario(path)
                counts["valid"] += 1
            except ScenarioError as e:
                counts["scenario error" if e.line else "error without a line"] += 1
            except Exception as e:            # noqa: BLE001 - counting is the point
                counts[f"traceback {type(e).__name__}"] += 1
                if len(bad) < 5:
                    bad.append(f"{type(e).__name__}: {e}"[:200])
            slowest = max(slowest, time.monotonic() - t)
    took = time.monotonic() - t0
    print(f"{args.cases} mutated scenarios in {took:.1f} s ({args.cases / took:.0f}/s), "
          f"slowest {slowest * 1e3:.1f} ms")
    for kind, n in sorted(counts.items()):
        print(f"  {kind:28} {n}")
    for line in bad:
        print(f"  e.g. {line}")


if __name__ == "__main__":
    main()
