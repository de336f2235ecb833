"""Dedup quality on real PBC with the indexed search (`dedup.search: faiss`) vs the exact search.

The million-image table (`dedup_scale_bench.py`) measures speed and recall on synthetic embeddings;
this checks the decisions on real cells, verified mode:
  1. the re-imaged benchmark of `dedup_bench.py` (distinct real PBC cells + cells re-imaged 2-3 times:
     shift, zoom, blur, exposure, JPEG): pair recall / precision of the final groups, lost cells;
  2. the real PBC five classes as they are: are the groups the same?
Below `wbc.dedup.index.MIN_IVF_ROWS` rows the faiss search is an exact flat index; here the IVF index is
forced (MIN_IVF_ROWS = 0) so that the approximate path itself is measured.

    python benchmarks/dedup_ann_quality.py            # prints a markdown table
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_bench import ROOT, pbc_members, quality, reimage_set  # noqa: E402

from wbc.dedup import fingerprints, groups  # noqa: E402
from wbc.dedup import index as ann  # noqa: E402


def timed_groups(f: fingerprints.Features, search: str) -> tuple[groups.GroupResult, float]:
    t = time.perf_counter()
    res = groups.find_groups(f, "verified", search=search)
    return res, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ROOT.parent / "shared" / "data" / "pbc" / "PBC_dataset_normal_DIB.zip")
    ap.add_argument("--distinct", type=int, default=2000)
    ap.add_argument("--groups", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-shift", type=float, default=0.15, help="re-imaged field shift per axis (dedup_bench)")
    ap.add_argument("--max-zoom", type=float, default=0.15, help="re-imaged zoom +- (dedup_bench)")
    args = ap.parse_args()
    ann.MIN_IVF_ROWS = 0  # measure the IVF index itself, not its exact small-N fallback
    members = pbc_members(args.zip)
    images, truth, _ = reimage_set(members, args.distinct, args.groups, max_shift=args.max_shift, max_zoom=args.max_zoom)
    rows = []
    for name, imgs in (("re-imaged benchmark", images), ("real PBC five classes", members)):
        keys = sorted(imgs)
        f = fingerprints.hash_images(imgs.__getitem__, keys, args.workers, parts=fingerprints.PARTS["verified"])
        exact, t_exact = timed_groups(f, "exact")
        indexed, t_indexed = timed_groups(f, "faiss")
        same = bool((exact.group == indexed.group).all() and (exact.keep == indexed.keep).all())
        row = {"set": f"{name} ({len(keys):,} images)", "exact s": t_exact, "faiss s": t_indexed,
               "candidates exact / faiss": f"{exact.n_candidates:,} / {indexed.n_candidates:,}",
               "confirmed pairs exact / faiss": f"{exact.n_confirmed:,} / {indexed.n_confirmed:,}",
               "kept exact / faiss": f"{int(exact.keep.sum()):,} / {int(indexed.keep.sum()):,}",
               "same groups": same}
        if name.startswith("re-imaged"):
            qe, qi = quality(exact, keys, truth), quality(indexed, keys, truth)
            row["recall / precision / lost (exact)"] = f"{qe['recall']:.3f} / {qe['precision']:.3f} / {qe['lost_cells']}"
            row["recall / precision / lost (faiss)"] = f"{qi['recall']:.3f} / {qi['precision']:.3f} / {qi['lost_cells']}"
        rows.append(row)
        print(row, flush=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
