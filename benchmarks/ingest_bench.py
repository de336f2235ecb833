"""Benchmark: the real PBC ingest (decode + validate + store every member), one worker (baseline)
versus all cores, in the same process. Usage: python benchmarks/ingest_bench.py [PBC_ZIP]"""
import sys
import tempfile
import time
from pathlib import Path

from wbc.data.ingest import ingest_sources
from wbc.data.sources import get_source

DEFAULT = Path(__file__).resolve().parents[2] / "shared/data/pbc/PBC_dataset_normal_DIB.zip"


def main() -> None:
    zip_path = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
    if not zip_path.is_file():
        sys.exit(f"PBC zip not found: {zip_path} (pass its path)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "raw")
        raw.mkdir()
        (raw / zip_path.name).symlink_to(zip_path.resolve())
        times = {}
        for workers in (1, 0):
            t = time.perf_counter()
            df = ingest_sources([get_source("pbc")], raw, Path(tmp, f"m{workers}.csv"),
                                Path(tmp, f"s{workers}"), {"workers": workers})
            times[workers] = time.perf_counter() - t
            label = "1 worker (baseline)" if workers == 1 else "all cores"
            print(f"{label:>20}: {len(df)} files, {(df.shard >= 0).sum()} stored, "
                  f"{times[workers]:.1f} s, {len(df) / times[workers]:.0f} files/s", flush=True)
        print(f"speed-up all cores vs 1 worker: {times[1] / times[0]:.2f}x")


if __name__ == "__main__":
    main()
