"""Dedup candidate search at 10k, 100k and 1M images: exact (wbc.dedup) vs indexed (wbc.dedup.index).

Synthetic data with planted near-duplicates, streamed to disk (np.memmap) in a temporary folder:
  - 64-bit AHash/PHash codes, uniform; 1 % of rows are copies of another row with <= 6 / <= 8 bits flipped;
  - a 153-d embedding (the size of dedup's shift-robust embedding) with low-rank, clustered structure
    (24 latent factors drawn around 1000 centres, + noise), L2-normalised; planted copies get small noise;
    a second, "zoomed-in" embedding per row (its own plus noise): every k-NN run also queries each row's
    zoomed embedding for its KZ nearest plain ones (dedup.knn_zoom), as the verified mode does.
    Without clusters (isotropic 24-d latent) the IVF index needs far more lists visited for the same
    recall: a partition index relies on the data having modes, as image embeddings do.
Every (N, method) runs in its own subprocess, which reports its wall time and peak RSS
(resource.getrusage; children included for the forked MIH workers).

  - hamming exact: `wbc.dedup.candidates.hamming_pairs` (paper rule AHash < 11 and PHash < 14); at N > --exact-max
    it runs on the first --sample query rows against all N and the time is extrapolated (x N/sample/2).
  - hamming MIH: `wbc.dedup.index.hamming_pairs_mih` (exact by construction); checked against the exact search
    for the first --sample query rows.
  - k-NN exact: `wbc.dedup` k-NN (blocked matmul), extrapolated the same way above --exact-max.
  - k-NN IVF: `wbc.dedup.index.knn_pairs_indexed` (FAISS IVF, fast-scan PQ, float16 re-ranking) on the
    memory-mapped embedding; recall@k of 1000 random queries against brute force, and the share of
    planted pairs among the candidates.
  - features in RAM / spilled: `wbc.dedup.fingerprints.hash_images` (verification features: reduced JPEG decode,
    thumbnails, embedding) of N images (512 distinct synthetic 360 px JPEG fields, cycled), in RAM
    vs streamed to memory-mapped files (`spill_dir`): peak RSS against N (--feature-sizes).

    nice -n 19 python benchmarks/dedup_scale_bench.py                  # 10k, 100k, 1M -> reports/dedup/scaling.md
    nice -n 19 python benchmarks/dedup_scale_bench.py --sizes 10000 100000 --out /tmp/scaling.md
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import wbc  # noqa: F401  (first: it pins the SIMD dispatch of NumPy, OpenCV, OpenBLAS; wbc.core.dispatch)
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM, LATENT, CLUSTERS, K, PLANT = 153, 24, 1000, 12, 0.01
#: The zoomed-in embedding's neighbours (dedup.knn_zoom): every k-NN run also queries them, as the verified mode does.
KZ = 8
A_BELOW, P_BELOW = 11, 14
METHODS = ("hamming_exact", "hamming_mih", "knn_exact", "knn_ivf")
FEATURE_METHODS = ("features_ram", "features_spilled")


# --------------------------------------------------------------------------- data


def make_data(n: int, folder: Path, seed: int = 0, block: int = 100_000) -> None:
    """codes_a.npy, codes_p.npy, emb.f32 (memmap, (n, DIM)) and planted.npy ((m, 2) source, copy)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    p = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    m = int(n * PLANT)
    rows = rng.permutation(n)[: 2 * m].reshape(m, 2)
    src, dst = rows[:, 0], rows[:, 1]
    a[dst] = a[src] ^ _flips(rng, m, 6)
    p[dst] = p[src] ^ _flips(rng, m, 8)
    np.save(folder / "codes_a.npy", a)
    np.save(folder / "codes_p.npy", p)
    np.save(folder / "planted.npy", np.stack([src, dst], 1))
    w = rng.normal(size=(LATENT, DIM)).astype(np.float32)
    centres = 2.0 * rng.normal(size=(CLUSTERS, LATENT)).astype(np.float32)
    emb = np.memmap(folder / "emb.f32", np.float32, "w+", shape=(n, DIM))
    for start in range(0, n, block):
        z = centres[rng.integers(0, CLUSTERS, min(block, n - start))]
        z += rng.normal(size=z.shape).astype(np.float32)
        x = z @ w + 2.0 * rng.normal(size=(len(z), DIM)).astype(np.float32)
        emb[start:start + len(z)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    for start in range(0, m, block):  # planted copies: the source plus small noise
        s, d = src[start:start + block], dst[start:start + block]
        x = emb[s] + 0.05 * rng.normal(size=(len(s), DIM)).astype(np.float32) / np.sqrt(DIM)
        emb[d] = x / np.linalg.norm(x, axis=1, keepdims=True)
    emb.flush()
    # the zoomed-in embedding of each row: its own plus noise (it costs the same queries as the real one)
    zoomed = np.memmap(folder / "emb_zoomed.f32", np.float32, "w+", shape=(n, DIM))
    for start in range(0, n, block):
        x = emb[start:start + block] + 0.5 * rng.normal(size=(min(block, n - start), DIM)).astype(np.float32) / np.sqrt(DIM)
        zoomed[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    zoomed.flush()


def _flips(rng: np.random.Generator, m: int, most: int) -> np.ndarray:
    """m random uint64 masks with 0..most bits set."""
    out = np.zeros(m, np.uint64)
    count = rng.integers(0, most + 1, m)
    for r in range(1, most + 1):
        bits = np.argsort(rng.random((m, 64)), axis=1)[:, :r]
        sel = count == r
        out[sel] = np.bitwise_or.reduce(np.uint64(1) << bits[sel].astype(np.uint64), axis=1)
    return out


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = np.load(folder / "codes_a.npy")
    emb = np.memmap(folder / "emb.f32", np.float32, "r").reshape(len(a), DIM)
    return a, np.load(folder / "codes_p.npy"), emb, np.load(folder / "planted.npy")


def load_zoomed(folder: Path, n: int) -> np.ndarray:
    return np.memmap(folder / "emb_zoomed.f32", np.float32, "r").reshape(n, DIM)


# --------------------------------------------------------------------------- one measurement


def _pair_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))


def _planted_recall(i: np.ndarray, j: np.ndarray, planted: np.ndarray) -> float:
    found = _pair_set(i, j)
    want = _pair_set(planted[:, 0], planted[:, 1])
    return len(found & want) / max(1, len(want))


def run_hamming(folder: Path, method: str, exact_max: int, sample: int, workers: int) -> dict:
    from wbc.dedup.index import hamming_pairs_mih
    from wbc.dedup.candidates import hamming_pairs

    a, p, _, planted = load(folder)
    n, q = len(a), min(sample, len(a))
    out: dict = {}
    t = time.perf_counter()
    if method == "hamming_exact" and n > exact_max:
        i, j = hamming_pairs(a[:q], A_BELOW, a, a2=p[:q], below2=P_BELOW, b2=p)
        out["extrapolated"] = f"{q} query rows x N/{q}/2"
        out["seconds"] = (time.perf_counter() - t) * n / q / 2
        return out
    if method == "hamming_exact":
        i, j = hamming_pairs(a, A_BELOW, a2=p, below2=P_BELOW)
    else:
        i, j = hamming_pairs_mih(a, A_BELOW, a2=p, below2=P_BELOW, workers=workers)
    out["seconds"], out["peak_rss_mb"] = time.perf_counter() - t, peak_rss_mb()  # before the untimed checks
    out["pairs"], out["planted_recall"] = len(i), _planted_recall(i, j, planted)
    if method == "hamming_mih":  # the same pairs as exact search, for the first q query rows
        ei, ej = hamming_pairs(a[:q], A_BELOW, a, a2=p[:q], below2=P_BELOW, b2=p)
        want = _pair_set(ei[ei != ej], ej[ei != ej])
        got = {(x, y) for x, y in _pair_set(i, j) if x < q or y < q}
        out["recall_vs_exact"] = len(got & want) / max(1, len(want))
        out["extra_vs_exact"] = len(got - want)
    return out


def run_knn(folder: Path, method: str, exact_max: int, sample: int, workers: int) -> dict:
    from wbc.dedup.index import build_ivf, knn_pairs_indexed, search_knn
    from wbc.dedup.candidates import _knn_one_way, knn_pairs

    _, _, emb, planted = load(folder)
    n, q = len(emb), min(sample, len(emb))
    zoomed = load_zoomed(folder, n)
    out: dict = {}
    t = time.perf_counter()
    if method == "knn_exact":
        if n > exact_max:
            _knn_one_way(np.ascontiguousarray(emb[:q]), emb, K, False, 2048)
            _knn_one_way(np.ascontiguousarray(zoomed[:q]), emb, KZ, False, 2048)
            out["extrapolated"] = f"{q} query rows x N/{q}"
            out["seconds"] = (time.perf_counter() - t) * n / q
            return out
        i, j = knn_pairs(np.asarray(emb), K, zoomed=np.asarray(zoomed), kz=KZ)
    else:
        import faiss

        faiss.omp_set_num_threads(workers)
        i, j = knn_pairs_indexed(emb, K, zoomed=zoomed, kz=KZ)
    out["seconds"], out["peak_rss_mb"] = time.perf_counter() - t, peak_rss_mb()  # before the untimed checks
    out["pairs"], out["planted_recall"] = len(i), _planted_recall(i, j, planted)
    if method == "knn_ivf":
        out["recall_at_k"] = _recall_at_k(emb, build_ivf, search_knn)
    return out


def _recall_at_k(emb: np.ndarray, build_ivf, search_knn, queries: int = 1000) -> float:
    """Mean share of each sampled query's exact k nearest neighbours that the index returns."""
    from wbc.dedup.candidates import _knn_one_way

    rows = np.sort(np.random.default_rng(1).choice(len(emb), min(queries, len(emb)), replace=False))
    qx = np.ascontiguousarray(emb[rows])
    ei, ej = _knn_one_way(qx, emb, K + 1, False, 2048)
    got = search_knn(build_ivf(emb), qx, K + 1)
    hits = 0
    for r in range(len(rows)):
        exact = set(ej[ei == r].tolist()) - {int(rows[r])}
        hits += len(exact & set(got[r].tolist()))
    return hits / (len(rows) * K)


def run_features(n: int, method: str, workers: int) -> dict:
    """hash_images (verification features) of n images, in RAM or spilled to disk."""
    import io

    from PIL import Image

    from wbc.dedup.fingerprints import PARTS, hash_images

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(512):
        field = rng.integers(0, 256, (45, 45, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        buf = io.BytesIO()
        Image.fromarray(field).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    with tempfile.TemporaryDirectory(prefix="dedup-spill-") as tmp:
        t = time.perf_counter()
        f = hash_images(lambda key: jpegs[key % len(jpegs)], range(n), workers, parts=PARTS["verified"],
                        spill_dir=tmp if method == "features_spilled" else None)
        out = {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb(), "rows": len(f)}
    return out


def peak_rss_mb() -> float:
    """Peak resident memory so far of this process (VmHWM: its own high-water mark; getrusage's
    ru_maxrss would keep the peak of the process that started it, Linux carries it across exec) and
    of its finished forked workers."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def worker(args: argparse.Namespace) -> None:
    """One (N, method) in this process: prints a JSON line with seconds, peak RSS and quality."""
    if args.method in FEATURE_METHODS:
        out = run_features(args.n, args.method, args.workers)
    else:
        run = run_hamming if args.method.startswith("hamming") else run_knn
        out = run(Path(args.data), args.method, args.exact_max, args.sample, args.workers)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), **out}))


# --------------------------------------------------------------------------- driver and report


def measure(n: int, folder: Path, method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--data", str(folder), "--method", method, "--n", str(n),
           "--exact-max", str(args.exact_max), "--sample", str(args.sample), "--workers", str(args.workers)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"N={n:>9,} {method:<14} {json.dumps(out)}", flush=True)
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def report(rows: list[tuple[int, str, dict]], args: argparse.Namespace) -> str:
    lines = ["# Dedup candidate search at scale", "",
             f"`nice -n 19 python benchmarks/dedup_scale_bench.py --sizes {' '.join(map(str, args.sizes))} "
             f"--feature-sizes {' '.join(map(str, args.feature_sizes))}` "
             f"on {platform.machine()}, {args.workers} workers/threads (`{platform.processor() or platform.platform()}`).",
             "Synthetic data with 1 % planted near-duplicates (see the script's docstring); time = the candidate "
             "search alone (features are given); peak RSS of the measuring subprocess (and its forked workers).",
             "Rows marked *extrapolated* ran the exact search for a sample of query rows against all N and scale "
             "the time linearly (the exact search is O(N^2)).", "",
             "| N | search | time (s) | peak RSS (MB) | pairs | planted pairs found | vs exact | note |",
             "|---:|---|---:|---:|---:|---:|---|---|"]
    for n, method, r in rows:
        vs = ""
        if "recall_vs_exact" in r:
            vs = f"same pairs for {args.sample} query rows: recall {r['recall_vs_exact']:.4f}, extra {r['extra_vs_exact']}"
        if "recall_at_k" in r:
            vs = f"recall@{K} {r['recall_at_k']:.4f} (1000 queries)"
        if method in FEATURE_METHODS:
            note = f"feature extraction of {r['rows']:,} images (not a search)"
        else:
            note = f"extrapolated: {r['extrapolated']}" if "extrapolated" in r else ""
        lines.append(f"| {n:,} | {method} | {_fmt(r['seconds'], '.1f')} | {_fmt(r['peak_rss_mb'], '.0f')} | "
                     f"{r.get('pairs', '')} | {_fmt(r.get('planted_recall'), '.4f')} | {vs} | "
                     f"{note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", default=str(ROOT / "reports/dedup/scaling.md"))
    ap.add_argument("--exact-max", type=int, default=100_000, help="above this N the exact search is extrapolated")
    ap.add_argument("--sample", type=int, default=10_000, help="query rows of the extrapolation and of the checks")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--feature-sizes", type=int, nargs="*", default=[10_000, 100_000],
                    help="N of the feature-extraction memory rows (RAM vs spilled)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--make-data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.make_data:
        return make_data(args.n, Path(args.make_data))
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="dedup-scale-") as tmp:
            # in a subprocess: this driver stays small, and so does the peak RSS its children inherit
            subprocess.run([sys.executable, __file__, "--make-data", tmp, "--n", str(n)], check=True, cwd=ROOT)
            for method in args.methods:
                rows.append((n, method, measure(n, Path(tmp), method, args)))
    for n in args.feature_sizes:
        for method in FEATURE_METHODS:
            rows.append((n, method, measure(n, Path(tempfile.gettempdir()), method, args)))
    text = report(rows, args)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
