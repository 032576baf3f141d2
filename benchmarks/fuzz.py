"""A fuzz campaign: spec texts generated and mutated; every accepted one runs on `auto`
against the interpreter, values and gradients.

Run:  python benchmarks/fuzz.py [--specs 10000] [--jobs 2] [--seed 0] [--out FILE]

The campaign itself (the sources of texts, how a case runs, what counts as a
mismatch) is recc.testing.fuzz; this is its command line. The texts are split
over --jobs worker processes, each drawing with its own seed. The summary
counts each outcome over distinct texts; internal errors, mismatches and cases
past --timeout are written to --out with their spec text, and make the exit
status 1. tests/test_fuzz.py runs a slice of this campaign in the slow tier.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from recc.testing.fuzz import Tally, campaign_share, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=10_000, help="distinct texts to run")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--out", default="fuzz-failures.txt", help="where bad cases go")
    args = parser.parse_args()
    start = time.perf_counter()
    share = [args.specs // args.jobs + (i < args.specs % args.jobs) for i in range(args.jobs)]
    work = [(n, args.seed * 1000 + i, args.timeout) for i, n in enumerate(share)]
    tally = Tally()
    with ProcessPoolExecutor(args.jobs) as pool:
        for part in pool.map(campaign_share, work):
            tally.merge(part)
    print(report(tally, time.perf_counter() - start))
    if tally.bad:
        with open(args.out, "w") as f:
            for outcome, source, text, detail in tally.bad:
                f.write(f"=== {outcome} ({source}): {detail}\n{text}\n\n")
        print(f"{len(tally.bad)} bad cases written to {args.out}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
