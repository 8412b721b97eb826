"""Fuzz the radiograph readers for N cases and count every outcome (issue 14, item 12).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/fuzz_readers.py --cases 20000

Each case takes a seed file (phantoms of every format, plus real radiographs from
../shared/data where present), applies 1-4 random mutations (tests/fuzz_corpus.py: bit flips,
truncation, insertions, extreme 16/32-bit values, DICOM VR, length and value changes) and reads
it with read_radiograph_bytes. The contract: a valid radiograph or one one-line
BadRadiographError naming the file and quoting no patient data. "foreign" counts any other
exception, "broken" a contract breach (multi-line or PHI-quoting message, pixels outside [0, 1],
metadata disagreeing with the pixels). Prints a JSON summary; exit code 1 when any.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_corpus import check_contract, mutate, phantom_seeds, random_mutations, real_seeds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-real", action="store_true", help="phantom seeds only")
    args = ap.parse_args()
    seeds = phantom_seeds()
    if not args.no_real:
        seeds.update(real_seeds())
    names = sorted(seeds)
    rng = random.Random(args.seed)
    counts: collections.Counter[str] = collections.Counter()
    per_format: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    examples: dict[str, list] = {}
    t0 = time.perf_counter()
    slowest, slowest_case = 0.0, None
    for i in range(args.cases):
        name = names[i % len(names)]
        muts = random_mutations(rng)
        t = time.perf_counter()
        outcome = check_contract(mutate(seeds[name], muts), name)
        if time.perf_counter() - t > slowest:
            slowest, slowest_case = time.perf_counter() - t, [name, muts]
        counts[outcome.kind] += 1
        per_format[name.rsplit(".", 1)[-1]][outcome.kind] += 1
        if outcome.kind in ("foreign", "broken-contract"):
            examples.setdefault(outcome.detail[:120], [name, muts])
    summary = {
        "cases": args.cases,
        "seed": args.seed,
        "seeds": len(names),
        "outcomes": dict(counts),
        "by_format": {k: dict(v) for k, v in sorted(per_format.items())},
        "seconds": round(time.perf_counter() - t0, 1),
        "slowest_case_s": round(slowest, 3),
        "slowest_case": slowest_case,
        "examples": examples,
    }
    print(json.dumps(summary, indent=1))
    return 1 if counts["foreign"] or counts["broken-contract"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
