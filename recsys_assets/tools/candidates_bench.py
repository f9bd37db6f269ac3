"""What the candidate path costs and saves (figures in docs/benchmarks.md, "Candidate generation").

    python -m recsys_assets.tools.candidates_bench synthetic --items 100000 --out /tmp/art100k
    python -m recsys_assets.tools.candidates_bench memory --artifact /tmp/art1m --workers 4
    python -m recsys_assets.tools.candidates_bench ml100k
    python -m recsys_assets.tools.candidates_bench content --items 1000000 --categories 9439

`synthetic`: a catalog of clustered embedding vectors with a popularity component (the 1M row of
issue 17's table), written as an artifact with its ANN index; the served top-10 of the candidate path
against the exact top-10 (recall), and one user's scoring time on both paths (p50/p95, one thread).
`memory`: N processes load one artifact memory-mapped and score; resident memory (RSS) and
proportional set size (PSS: shared pages divided among the processes that map them) per process.
`ml100k`: a MovieLens Hybrid with the candidate path forced (threshold 0): recall@10 against the exact
top-10 and offline NDCG@10 of both paths on the temporal protocol's test users.
`content`: the synthetic catalog with a content component over many categories: the candidate path with
the content Gram matrix stored sparse against scoring the content part over the whole catalog.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp


def synthetic_artifact(n_items: int, n_users: int = 2_000, dim: int = 64, seed: int = 0):
    """An embedding + popularity artifact with `n_items` items, clustered vectors, 20-event histories."""
    from recsys_assets.contract.artifact import ServingArtifact
    from recsys_assets.contract.scoring import Component, Scorer

    # vectors (and two working copies), the ANN index (vectors + ~2 x 16 links of 4 bytes each), the ids
    need = n_items * dim * 4 * 3 + n_items * (dim * 4 + 160) + n_items * 100 + n_users * dim * 4
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > avail:
        raise MemoryError(f"{n_items} items x {dim} dims needs ~{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB free")
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(256, dim)).astype(np.float32)
    items = centers[rng.integers(0, 256, n_items)] + 0.7 * rng.normal(size=(n_items, dim)).astype(np.float32)
    items *= (0.3 * (1 + rng.pareto(3, size=(n_items, 1)))).astype(np.float32)
    users = centers[rng.integers(0, 256, n_users)] + 0.7 * rng.normal(size=(n_users, dim)).astype(np.float32)
    pop = rng.zipf(1.3, size=n_items).clip(max=100_000).astype(np.float32)
    cols = rng.choice(n_items, size=(n_users, 20), p=pop / pop.sum())
    rows = np.repeat(np.arange(n_users), 20)
    history = sp.csr_matrix((np.ones(n_users * 20, np.float32), (rows, cols.ravel())), shape=(n_users, n_items))
    history.sum_duplicates()
    scorer = Scorer(
        {
            "embedding": Component("embedding", {"item_factors": items, "user_factors": users.astype(np.float32)}),
            "popularity": Component("popularity", {"popularity": pop}),
        },
        {"embedding": 1.0, "popularity": 0.2},
    )
    ids = np.asarray([f"i{j}" for j in range(n_items)])
    return ServingArtifact(
        model_name="Synthetic",
        model_version=f"synthetic-{n_items}",
        scorer=scorer,
        user_ids=np.asarray([f"u{u}" for u in range(n_users)]),
        item_ids=ids,
        history=history,
        item_titles=ids,
        item_categories=np.full(n_items, "", dtype=str),
    )


def publish(storage: str, n_items: int) -> str:
    """The artifact folder for a synthetic catalog under a storage root, named by the champion pointer
    there, so the API and the load generator (`--storage`) serve it."""
    from recsys_assets.contract.artifact import CHAMPION_POINTER

    parts = ["artifacts", f"synthetic-{n_items}"]
    pointer = os.path.join(storage, *CHAMPION_POINTER)
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    with open(pointer, "w") as fh:
        json.dump({"path": parts, "model_version": f"synthetic-{n_items}", "model_name": "Synthetic"}, fh)
    return os.path.join(storage, *parts)


def _quantiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3)}


def compare_paths(art, users: np.ndarray, k: int = 10) -> dict[str, object]:
    """Recall of the candidate top-k against the exact top-k, and both paths' time per user."""
    from recsys_assets.contract.retrieval import Retriever

    retriever = Retriever(art.scorer, art.retrieval)
    hist = art.history
    exact_t, cand_t, recall = [], [], []
    for u in users.tolist():
        lo, hi = hist.indptr[u], hist.indptr[u + 1]
        idx, w = hist.indices[lo:hi], hist.data[lo:hi]
        t = time.perf_counter()
        exact = art.scorer.topk_one(idx, w, k, u, exclude=idx)
        exact_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        approx = retriever.topk_one(idx, w, k, u, exclude=idx)
        cand_t.append(time.perf_counter() - t)
        recall.append(len(set(exact.tolist()) & set(approx.tolist())) / k)
    return {
        "recall@10": round(float(np.mean(recall)), 4),
        "exact": _quantiles(exact_t),
        "candidates": _quantiles(cand_t),
    }


def bench_synthetic(
    n_items: int,
    out: str | None,
    n_users: int = 300,
    build_only: bool = False,
    reuse: bool = False,
    expansion_add: int | None = None,
    threads: int = 0,
) -> dict[str, object]:
    """Build (or, with `reuse`, read back) a synthetic artifact; then, unless `build_only`, recall and
    time per user of both paths."""
    from recsys_assets.contract.artifact import load_artifact, save_artifact
    from recsys_assets.lib.models.ann import retrieval_arrays

    result: dict[str, object] = {"items": n_items}
    if reuse and out and os.path.exists(os.path.join(out, "manifest.json")):
        art = load_artifact(out, mmap=True)
        if len(art.item_ids) != n_items:
            raise SystemExit(f"{out} holds {len(art.item_ids)} items, not {n_items}: give another --out")
    else:
        art = synthetic_artifact(n_items)
        t, cpu = time.perf_counter(), time.process_time()
        options = ({} if expansion_add is None else {"expansion_add": expansion_add}) | {"threads": threads}
        result |= options
        art.retrieval = retrieval_arrays(art.scorer, art.history, **options)
        result["ann_build_s"] = round(time.perf_counter() - t, 1)
        result["ann_build_cpu_s"] = round(time.process_time() - cpu, 1)
        result["ann_mb"] = round(art.retrieval["embedding.ann"].nbytes / 1e6, 1)
        if out:
            save_artifact(art, out)
            art = load_artifact(out, mmap=True)
    if build_only:
        return result
    users = np.random.default_rng(1).choice(len(art.user_ids), size=n_users, replace=False)
    compare_paths(art, users[:20])  # warm caches and the index pages
    result.update(compare_paths(art, users))
    return result


def bench_content(n_items: int, n_categories: int, n_users: int = 300) -> dict[str, object]:
    """The synthetic artifact with a content component over `n_categories` categories (one per item, Zipf
    sizes: a shop's log whose only item metadata is a category): the candidate path's time per user with
    the content Gram matrix stored sparse, against scoring the content part over the whole catalog (what
    a vocabulary above `CONTENT_GRAM_LIMIT` got before), both in this run."""
    import contextlib

    from recsys_assets.contract import retrieval
    from recsys_assets.contract.scoring import Component, Scorer
    from recsys_assets.lib.models.ann import retrieval_arrays

    art = synthetic_artifact(n_items)
    rng = np.random.default_rng(2)
    cats = (rng.zipf(1.3, n_items) - 1) % n_categories
    feats = sp.csr_matrix((np.ones(n_items, np.float32), (np.arange(n_items), cats)), shape=(n_items, n_categories))
    art.scorer = Scorer(
        {**art.scorer.components, "content": Component("content", {"item_features": feats})},
        {**art.scorer.weights, "content": 0.5},
    )
    t = time.perf_counter()
    moments = retrieval.moments(art.scorer.components["content"])
    result: dict[str, object] = {"items": n_items, "categories": n_categories}
    result["gram_build_s"] = round(time.perf_counter() - t, 2)
    result["gram_mb"] = round(sum(v.nbytes for k, v in moments.items() if k.startswith("gram")) / 1e6, 2)
    arrays = retrieval_arrays(art.scorer, art.history)
    hist = art.history
    users = np.random.default_rng(1).choice(len(art.user_ids), size=n_users, replace=False)
    old = {k: v for k, v in arrays.items() if not k.startswith("content.") or k == "content.cold"}
    with contextlib.ExitStack() as stack:
        # the catalog path as it was: no content moments stored, none computed when the retriever starts
        stack.callback(setattr, retrieval, "SPARSE_GRAM_LIMIT", retrieval.SPARSE_GRAM_LIMIT)
        retrieval.SPARSE_GRAM_LIMIT = 0
        catalog = retrieval.Retriever(art.scorer, old)
    sparse = retrieval.Retriever(art.scorer, arrays)
    times: dict[str, list[float]] = {"sparse_gram": [], "catalog": []}
    for rnd in range(2):  # the first round warms caches; the second is timed, the two paths alternated
        for u in users.tolist():
            lo, hi = hist.indptr[u], hist.indptr[u + 1]
            idx, w = hist.indices[lo:hi], hist.data[lo:hi]
            for name, r in (("sparse_gram", sparse), ("catalog", catalog)):
                t = time.perf_counter()
                r.topk_one(idx, w, 10, u, exclude=idx)
                if rnd:
                    times[name].append(time.perf_counter() - t)
    same = [
        np.array_equal(sparse.topk_one(i, w, 10, u, exclude=i), catalog.topk_one(i, w, 10, u, exclude=i))
        for u in users[:50].tolist()
        for i, w in [
            (hist.indices[hist.indptr[u] : hist.indptr[u + 1]], hist.data[hist.indptr[u] : hist.indptr[u + 1]])
        ]
    ]
    result |= {name: _quantiles(ts) for name, ts in times.items()}
    result["same_top10_share"] = round(float(np.mean(same)), 3)
    return result


def bench_paths(directory: str, n_users: int = 300, k: int = 10) -> dict[str, object]:
    """An artifact read memory-mapped, as the API reads it, with one BLAS thread: both paths' time per
    list for `n_users` of its users (plus 5% unknown ones for `recommend`), as `Scorer.topk_one` /
    `Retriever.topk_one` and as the API's `build_history` + `recommend` (reasons included)."""
    from threadpoolctl import threadpool_limits

    from recsys_assets.contract.artifact import load_artifact
    from serving.loaded import LoadedModel
    from serving.recommend import build_history, recommend

    art = load_artifact(directory, mmap=True)
    n_items = len(art.item_ids)
    rng = np.random.default_rng(1)
    users = rng.choice(len(art.user_ids), size=min(n_users, len(art.user_ids)), replace=False)
    ids = [str(art.user_ids[u]) for u in users.tolist()]
    ids += [f"bench-new-{i}" for i in range(max(1, len(ids) // 20))]
    result: dict[str, object] = {"items": n_items, "users": len(users)}
    with threadpool_limits(1):
        compare_paths(art, users[:20], k)  # warm caches and the index pages
        result.update(compare_paths(art, users, k))
        for path, threshold in (("exact", n_items), ("candidates", 0)):
            model = LoadedModel.build(art, directory, candidate_threshold=threshold)
            times = []
            for rnd in range(2):  # the first round warms
                for user in ids:
                    t = time.perf_counter()
                    recommend(model, build_history(model, user, [], {}), k, None, True)
                    if rnd:
                        times.append(time.perf_counter() - t)
            result[f"recommend_{path}"] = _quantiles(times)
    return result


def _pss_kb(pid: int) -> tuple[int, int]:
    fields = _smaps(pid)
    return fields["Rss"], fields["Pss"]


def _smaps(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in kB: Rss, Pss, Private_Clean, Private_Dirty, Shared_Clean, ..."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        fields = dict(line.split(":", 1) for line in fh.read().splitlines()[1:])
    return {k.strip(): int(v.split()[0]) for k, v in fields.items()}


def bench_api_memory(storage: str, workers: int, requests: int = 2_000) -> dict[str, object]:
    """The API itself (`python -m serving`, Redis, list cache off) with `workers` workers serving the
    champion under `storage`: after `requests` lists for its users, RSS, PSS and private memory of each
    worker and in total (the master process reported apart)."""
    import tempfile
    import urllib.request
    from pathlib import Path

    import psutil

    from recsys_assets.contract.artifact import load_artifact
    from recsys_assets.tools.loadgen.stack import stack

    art = load_artifact(_artifact_dir(storage), mmap=True)
    users = [str(u) for u in art.user_ids[: min(len(art.user_ids), 500)].tolist()] + ["bench-new-1"]
    work = Path(tempfile.mkdtemp(prefix="candidates-bench-mem-"))
    with stack(Path(storage), work, workers=workers, cache_ttl=0) as st:
        for n in range(requests):
            with urllib.request.urlopen(f"{st.url}/v1/users/{users[n % len(users)]}/recommendations?k=10") as r:
                r.read()
        procs = st.server_processes()
        main = procs[0]
        kids = [p for p in procs[1:] if "resource_tracker" not in " ".join(p.cmdline())]
        mem = {p.pid: _smaps(p.pid) for p in [main, *kids]}
    # one worker: `python -m serving` serves in its own process, with no master
    each = [mem[p.pid] for p in kids] if kids else [mem[main.pid]]

    def mb(kb: float) -> float:
        return round(kb / 1024, 1)

    return {
        "workers": workers,
        "artifact_mb": mb(os.path.getsize(os.path.join(_artifact_dir(storage), "arrays.npz")) / 1024),
        "worker_rss_mb": [mb(m["Rss"]) for m in each],
        "worker_pss_mb": [mb(m["Pss"]) for m in each],
        # private includes mapped file pages no other process maps; anonymous is the process's own heap
        "worker_private_mb": [mb(m["Private_Clean"] + m["Private_Dirty"]) for m in each],
        "worker_anonymous_mb": [mb(m["Anonymous"]) for m in each],
        "workers_rss_mb_total": mb(sum(m["Rss"] for m in each)),
        "workers_pss_mb_total": mb(sum(m["Pss"] for m in each)),
        "master_rss_mb": mb(mem[main.pid]["Rss"]) if kids else 0.0,
        "master_pss_mb": mb(mem[main.pid]["Pss"]) if kids else 0.0,
        "master_private_mb": mb(mem[main.pid]["Private_Clean"] + mem[main.pid]["Private_Dirty"]) if kids else 0.0,
        "all_pss_mb_total": mb(sum(m["Pss"] for m in mem.values())),
        "machine_available_mb": round(psutil.virtual_memory().available / 2**20),
    }


def bench_memory(artifact: str, workers: int) -> dict[str, object]:
    """N processes that each load `artifact` as the API does (mapped, `LoadedModel.build`) and score."""
    code = (
        "import sys,time;from recsys_assets.contract.artifact import load_artifact;"
        "from serving.loaded import LoadedModel;"
        "m=LoadedModel.build(load_artifact(sys.argv[1],mmap=True),'x',0);"
        "import numpy as np;r=m.retriever;h=m.artifact.history;"
        "[r.topk_one(h.indices[h.indptr[u]:h.indptr[u+1]],h.data[h.indptr[u]:h.indptr[u+1]],10,u) for u in range(200)];"
        "print('ready',flush=True);time.sleep(600)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, artifact], stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        mem = [_pss_kb(p.pid) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return {
        "workers": workers,
        "rss_mb_each": [round(r / 1024) for r, _ in mem],
        "pss_mb_each": [round(s / 1024) for _, s in mem],
        "rss_mb_total": round(sum(r for r, _ in mem) / 1024),
        "pss_mb_total": round(sum(s for _, s in mem) / 1024),
    }


def bench_ml100k() -> dict[str, object]:
    """MovieLens-100k, temporal protocol: the candidate path (threshold 0) against exact, for the
    quick Hybrid (item-kNN + content + popularity) and for a PureSVD embedding + popularity blend."""
    from scipy.sparse.linalg import svds

    from recsys_assets.contract.scoring import Component, Scorer
    from recsys_assets.contract.settings import Settings
    from recsys_assets.lib.ingest import cleaning, readers
    from recsys_assets.lib.models.fitting import prepare
    from recsys_assets.lib.models.native import HybridModel
    from recsys_assets.tools.chaos import item_knn

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    raw, items, users = readers.read_movielens()
    inter = cleaning.clean_events(raw, settings.cleaning()).interactions
    pdata = prepare(inter, cleaning.build_items(inter, items), cleaning.build_users(inter, users), "temporal")
    train = pdata.data.matrix
    knn = Component("item_item", {"similarity": item_knn(train, 50)}, {"binary": 1})
    hybrid = HybridModel(collaborative=knn, collaborative_name="ItemKNN").fit(pdata).scorer
    u, s, vt = svds(train.astype(np.float64), k=64)
    svd = Scorer(
        {
            "svd": Component(
                "embedding", {"user_factors": (u * s).astype(np.float32), "item_factors": vt.T.astype(np.float32)}
            ),
            "popularity": Component("popularity", {"popularity": np.diff(train.tocsc().indptr).astype(np.float32)}),
        },
        {"svd": 1.0, "popularity": 0.1},
    )
    test_users = np.flatnonzero(np.diff(pdata.test_truth.indptr) > 0)
    return {
        "users": len(test_users),
        **{name: _paths_ndcg(sc, pdata, test_users) for name, sc in (("Hybrid", hybrid), ("PureSVD", svd))},
    }


def _paths_ndcg(scorer, pdata, users: np.ndarray) -> dict[str, object]:
    from recsys_assets.contract.retrieval import Retriever
    from recsys_assets.lib.evaluation.metrics import evaluate_topk
    from recsys_assets.lib.models.ann import retrieval_arrays

    hist, exclude, truth = pdata.data.matrix[users], pdata.test_exclude[users], pdata.test_truth[users]
    exact = scorer.topk(hist, 10, user_idx=users, exclude=exclude)
    retriever = Retriever(scorer, retrieval_arrays(scorer, pdata.data.matrix))
    approx = retriever.topk(hist, 10, user_idx=users, exclude=exclude)
    ndcg = {
        name: round(float(evaluate_topk(top, truth, (10,)).query("metric == 'ndcg'")["value"].iloc[0]), 5)
        for name, top in (("exact", exact), ("candidates", approx))
    }
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.tolist(), approx.tolist(), strict=True)])
    return {"recall@10": round(float(recall), 4), "ndcg@10": ndcg}


def _artifact_dir(path: str) -> str:
    """An artifact folder, or the folder a storage root's champion pointer names."""
    from recsys_assets.contract.artifact import CHAMPION_POINTER

    pointer = os.path.join(path, *CHAMPION_POINTER)
    if os.path.exists(pointer):
        with open(pointer) as fh:
            return os.path.join(path, *json.load(fh)["path"])
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="candidates_bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--items", type=int, required=True)
    s.add_argument("--out", default=None, help="write the artifact here (then read it back memory-mapped)")
    s.add_argument("--storage", help="write the artifact under this storage root as its champion (for loadgen)")
    s.add_argument("--build-only", action="store_true", help="build and write the artifact, time nothing")
    s.add_argument("--expansion-add", type=int, help="HNSW build breadth (default: lib/models/ann.py's)")
    s.add_argument("--threads", type=int, default=0, help="ANN build threads (0: one per core)")
    s.add_argument("--reuse", action="store_true", help="time the artifact already in --out instead of building")
    m = sub.add_parser("memory")
    m.add_argument("--artifact", required=True)
    m.add_argument("--workers", type=int, default=1)
    m.add_argument("--api", action="store_true", help="measure `python -m serving` itself (--artifact: a storage root)")
    t = sub.add_parser("paths")
    t.add_argument("--artifact", required=True, help="an artifact folder (or a storage root with a champion)")
    t.add_argument("--users", type=int, default=300)
    sub.add_parser("ml100k")
    c = sub.add_parser("content")
    c.add_argument("--items", type=int, required=True)
    c.add_argument("--categories", type=int, default=9_439, help="distinct categories (Taobao's full log: 9,439)")
    c.add_argument("--users", type=int, default=300)
    args = parser.parse_args(argv)
    if args.cmd == "synthetic":
        print(f"building a {args.items}-item artifact and its ANN index ...", file=sys.stderr, flush=True)
        if args.storage:
            args.out = publish(args.storage, args.items)
        out = bench_synthetic(
            args.items,
            args.out,
            build_only=args.build_only,
            reuse=args.reuse,
            expansion_add=args.expansion_add,
            threads=args.threads,
        )
    elif args.cmd == "content":
        out = bench_content(args.items, args.categories, args.users)
    elif args.cmd == "paths":
        out = bench_paths(_artifact_dir(args.artifact), args.users)
    elif args.cmd == "memory":
        if args.api:
            out = bench_api_memory(args.artifact, args.workers)
        else:
            out = bench_memory(_artifact_dir(args.artifact), args.workers)
    else:
        out = bench_ml100k()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
