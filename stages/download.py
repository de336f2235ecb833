"""Stage `download`: fetch (or generate) the archives of the data profile, ingest them into the
manifest and the image store, and write the counts and a sample grid.

Params: data, download, ingest. dvc.yaml passes every path, and the checksum lock
(`sources.lock.yaml` at the project root: trust-on-first-use pins are written there).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from wbc.data import fetch, ingest, plots, sources, synthetic
from wbc.core.params import load_params, run_stage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--raw", "--manifest", "--store", "--reports", "--lock"):
        parser.add_argument(flag, type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    data, dl = params["data"], params["download"]
    selected = sources.profile_sources(data["profile"])
    args.raw.mkdir(parents=True, exist_ok=True)

    archives = {}
    if any(s.get("generator") == "synthetic" for s in selected):
        synth = data.get("synthetic", {})
        synthetic.generate(args.raw, seed=synth.get("seed", 20200420), scale=synth.get("scale", 1.0))
    for src in selected:
        if src.get("generator"):
            continue
        res = fetch.fetch(src, args.raw, mirror=data.get("mirror"), timeout=dl["timeout"],
                          retries=dl["retries"], backoff=dl["backoff"], lock=args.lock)
        archives[src["id"]] = {"file": src["file"], "sha256": res.sha256, "size": res.size}

    manifest = ingest.ingest_sources(selected, args.raw, args.manifest, args.store, params["ingest"])
    summary = ingest.summarize(manifest)
    summary["profile"] = data["profile"]
    summary["archives"] = archives
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plots.class_samples(manifest, args.store, args.reports / "samples.png", title=f"profile {data['profile']}: random images per class")
    return 0


if __name__ == "__main__":
    run_stage("download", main)
