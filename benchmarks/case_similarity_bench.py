"""Cost of the review page's case-similarity numbers for one page of similar cases.

    OMP_NUM_THREADS=1 python benchmarks/case_similarity_bench.py

For each size: random L2-normalised query and case embeddings; per shown case the per-query-
slice best similarity, its mean (the case similarity) and the "matched on N of M slices" count
against the other cases (`retrieval/engine/case_similarity.py`). Prints the median of 5 runs.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.engine.case_similarity import (  # noqa: E402
    case_score,
    matched_slices,
    per_slice_best,
)

SIZES = ((64, 64, 24, 128), (300, 300, 24, 128))


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{platform.machine()}, {platform.python_version()}, numpy {np.__version__}")
    for q_n, r_n, c_n, dim in SIZES:
        query = _unit(rng.normal(size=(q_n, dim)))
        cases = [_unit(rng.normal(size=(r_n, dim))) for _ in range(c_n)]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            best = [per_slice_best(query, c) for c in cases]
            for i, b in enumerate(best):
                case_score(b)
                matched_slices(b, best[:i] + best[i + 1 :])
            times.append(time.perf_counter() - t0)
        print(
            f"query slices {q_n}, slices per case {r_n}, cases {c_n}, dim {dim}: "
            f"median {1000 * float(np.median(times)):.1f} ms"
        )


if __name__ == "__main__":
    main()
