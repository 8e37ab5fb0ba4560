"""Vector index benchmark: build time, memory, recall@k against exact, single-query latency.

    python benchmarks/index_bench.py --n 1000000 --dim 128 --k 10 --json OUT.json \
        [--queries 500] [--backends exact,lsh-paper,lsh,faiss-hnsw] [--spread 0.5]
        [--clusters 1000] [--hnsw-max-n N] [--real-embeddings path.npy]

All backends are built and measured in one run on the same vectors and queries. Latency is
single-query (`index.search(q, k)` with one vector), measured interleaved -- query i is run on
every backend before query i+1 -- so load from other processes on a shared machine hits all
backends alike. Recall@k is against the exact top k (computed once, batched).

Memory: `nbytes` is what the index's own arrays hold (vectors, tables, graph); `rss_delta` is
the growth of this process's resident set (VmRSS from /proc/self/status) across the build,
which also counts allocator slack and temporaries that were not returned to the OS.

Data (default): clustered synthetic unit vectors, see retrieval/engine/index/synthetic.py --
`clusters` Gaussian clusters with uneven sizes, isotropic noise of norm `spread` around unit
centres, L2-normalised; queries are fresh draws from the same mixture. The run prints the
measured intra- and inter-cluster cosines and the queries' true top-1 / top-k cosines so the
difficulty is visible. With --real-embeddings, the rows of an (N, D) .npy file are used
instead; `--queries` rows are held out of the index as queries.

A backend may carry parameters: `lsh@tables=32+bits=18+probes=256`, `lsh@dtype=float16`,
`faiss-hnsw@M=32+ef_search=128`. `--hnsw-max-n` skips faiss-hnsw above that N (its build on 2
cores takes minutes at 1M); the output says so when it happens.

Target (issue 3): at N = 1,000,000, dim 128, k 10: `lsh` recall@10 >= 0.95 with p50 latency
<= 1/10 of `exact`'s, in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from retrieval.engine.index import build_index  # noqa: E402
from retrieval.engine.index.base import normalize  # noqa: E402
from retrieval.engine.index.exact import exact_topk  # noqa: E402
from retrieval.engine.index.synthetic import ClusteredVectors, similarity_profile  # noqa: E402

DEFAULT_BACKENDS = "exact,lsh-paper,lsh,faiss-hnsw"
WARMUP = 5


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def parse_backend(spec: str) -> tuple[str, str, dict]:
    """'lsh@tables=32+bits=18' -> (label, backend, params)."""
    name, _, rest = spec.partition("@")
    params: dict = {}
    for item in filter(None, rest.split("+")):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                params[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key] = {"true": True, "false": False}.get(value.lower(), value)
    return spec, name, params


def load_data(args) -> tuple[np.ndarray, np.ndarray, dict]:
    if args.real_embeddings:
        emb = normalize(np.load(args.real_embeddings).astype(np.float32))
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(emb))
        q = emb[order[: args.queries]]
        x = emb[order[args.queries : args.queries + args.n]]
        info = {"source": str(args.real_embeddings), "rows": int(len(emb))}
        return np.ascontiguousarray(x), np.ascontiguousarray(q), info
    gen = ClusteredVectors(dim=args.dim, clusters=args.clusters, spread=args.spread, seed=args.seed)
    x, labels = gen.sample(args.n, seed=args.seed + 1)
    q, _ = gen.sample(args.queries, seed=args.seed + 2)
    info = {
        "source": "clustered synthetic (retrieval/engine/index/synthetic.py)",
        "clusters": args.clusters,
        "spread": args.spread,
        **similarity_profile(x, labels, seed=args.seed),
    }
    return x, q, info


def percentile_ms(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--backends", default=DEFAULT_BACKENDS)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hnsw-max-n", type=int, default=None)
    ap.add_argument("--real-embeddings", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    x, q, data_info = load_data(args)
    n, dim = x.shape
    print(f"data: {n} x {dim}, {len(q)} queries, generated in {time.perf_counter() - t0:.1f}s")
    truth_rows, truth_scores = exact_topk(x, q, args.k)
    data_info["query_top1_cos"] = float(truth_scores[:, 0].mean())
    data_info[f"query_top{args.k}_cos"] = float(truth_scores[:, -1].mean())
    print("data profile:", json.dumps({k: v for k, v in data_info.items()}, default=str))
    ids = np.arange(n, dtype=np.int64)
    truth = ids[truth_rows]

    results: dict[str, dict] = {}
    indexes = {}
    for spec in args.backends.split(","):
        label, backend, params = parse_backend(spec.strip())
        if backend == "faiss-hnsw":
            if args.hnsw_max_n is not None and n > args.hnsw_max_n:
                results[label] = {"skipped": f"N={n} > --hnsw-max-n {args.hnsw_max_n}"}
                print(f"{label}: SKIPPED (N={n} > --hnsw-max-n {args.hnsw_max_n})")
                continue
            params.setdefault("deterministic", False)  # use both cores for the build
        gc.collect()
        rss0 = rss_bytes()
        t = time.perf_counter()
        index = build_index(backend, dim=dim, seed=args.seed, **params)
        index.add(ids, x)
        if hasattr(index, "flush"):
            index.flush()
        build_s = time.perf_counter() - t
        gc.collect()
        results[label] = {
            "backend": backend,
            "params": index.params(),
            "build_s": build_s,
            "nbytes": index.nbytes(),
            "rss_delta_bytes": rss_bytes() - rss0,
        }
        indexes[label] = index
        print(f"{label}: built in {build_s:.1f}s, {index.nbytes() / 2**20:.0f} MiB", flush=True)

    for index in indexes.values():  # warm caches and code paths
        for i in range(min(WARMUP, len(q))):
            index.search(q[i], args.k)
    latency = {label: [] for label in indexes}
    found = {label: np.full((len(q), args.k), -1, dtype=np.int64) for label in indexes}
    for i in range(len(q)):
        for label, index in indexes.items():
            t = time.perf_counter()
            got, _ = index.search(q[i], args.k)
            latency[label].append(time.perf_counter() - t)
            found[label][i, : got.shape[1]] = got[0]
    for label in indexes:
        rec = [
            len(set(f[f >= 0].tolist()) & set(tr.tolist())) / args.k
            for f, tr in zip(found[label], truth, strict=True)
        ]
        results[label].update(
            recall_at_k=float(np.mean(rec)),
            p50_ms=percentile_ms(latency[label], 50),
            p95_ms=percentile_ms(latency[label], 95),
            mean_results=float((found[label] >= 0).sum(axis=1).mean()),
        )
        if hasattr(indexes[label], "candidate_count"):
            results[label]["median_candidates"] = float(
                np.median(indexes[label].candidate_count(q[: min(100, len(q))]))
            )

    exact_p50 = results.get("exact", {}).get("p50_ms")
    print()
    header = f"{'backend':<34}{'build s':>9}{'MiB':>8}{'RSS MiB':>9}{'recall@' + str(args.k):>11}"
    header += f"{'p50 ms':>9}{'p95 ms':>9}{'x exact':>9}"
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        if "skipped" in r:
            print(f"{label:<34}  skipped: {r['skipped']}")
            continue
        speed = exact_p50 / r["p50_ms"] if exact_p50 else float("nan")
        r["speedup_vs_exact_p50"] = speed
        print(
            f"{label:<34}{r['build_s']:>9.1f}{r['nbytes'] / 2**20:>8.0f}"
            f"{r['rss_delta_bytes'] / 2**20:>9.0f}{r['recall_at_k']:>11.3f}"
            f"{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{speed:>9.1f}"
        )
    target = None
    if "lsh" in results and exact_p50 and "recall_at_k" in results["lsh"]:
        lsh = results["lsh"]
        target = {
            "recall_ok": lsh["recall_at_k"] >= 0.95,
            "latency_ok": lsh["p50_ms"] <= exact_p50 / 10,
        }
        verdict = "MET" if all(target.values()) else "NOT MET"
        print(
            f"\ntarget (lsh recall@{args.k} >= 0.95 and p50 <= exact p50 / 10): {verdict} "
            f"(recall {lsh['recall_at_k']:.3f}, p50 {lsh['p50_ms']:.2f} ms vs exact "
            f"{exact_p50:.2f} ms / 10 = {exact_p50 / 10:.2f} ms)"
        )
    report = {
        "n": n,
        "dim": dim,
        "k": args.k,
        "queries": len(q),
        "data": data_info,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "backends": results,
        "target": target,
        "wall_s": time.perf_counter() - t0,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
