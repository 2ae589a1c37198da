"""Long-run fuzzer: the NMEA, RFID and sensor decoders and Pipeline.process (offline)
over generated hostile input; the generators and checks are in tests/fuzzkit.py.

Prints inputs/s, totals, pipeline outcome per message, dead letters by reason, and
exceptions / hangs / accounting violations (each saved with its reproducer under
--out). Exit status 1 if anything was found.

    .venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed 1] [--batch 2000]
                                   [--hang-s 30] [--out fuzz-findings]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` from the repo root

from tests.fuzzkit import Fuzzer, Report, summary


def main() -> int:
    """Run the fuzzer, print its report; 1 if it found anything."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2000, help="inputs per batch")
    ap.add_argument("--hang-s", type=float, default=30.0,
                    help="a batch taking longer is reported as a hang and saved")
    ap.add_argument("--out", type=Path, default=Path("fuzz-findings"),
                    help="where reproducers are written")
    args = ap.parse_args()
    warnings.simplefilter("error", RuntimeWarning)  # numeric overflow in the core counts

    def progress(r: Report) -> None:
        if r.batches % 50 == 0:
            print(f"  {r.inputs:,} inputs, {r.inputs / r.seconds:,.0f}/s, "
                  f"{len(r.exceptions)} exceptions, {len(r.hangs)} hangs, "
                  f"{len(r.violations)} violations", flush=True)

    print(f"fuzz: {args.inputs:,} inputs, seed {args.seed}, batches of {args.batch}, "
          f"hang limit {args.hang_s:g} s", flush=True)
    report = Fuzzer(seed=args.seed, out_dir=args.out, batch=args.batch,
                    hang_s=args.hang_s).run(args.inputs, progress)
    print(summary(report))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
