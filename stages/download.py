"""Stage `download`: fetch (or generate) the archives of the data profile, ingest them into the
manifest and the image store, and write the counts and a sample grid.

Params: data, download, ingest.  Outputs: see dvc.yaml.
"""
from __future__ import annotations

import json
from pathlib import Path

from wbc import fetch, ingest, plots, sources, synthetic
from wbc.params import load_params, run_stage

RAW = Path("data/raw")
MANIFEST = Path("data/interim/manifest.csv")
STORE = Path("data/interim/store")
REPORTS = Path("reports/download")


def main() -> int:
    params = load_params()
    data, dl = params["data"], params["download"]
    selected = sources.profile_sources(data["profile"])
    RAW.mkdir(parents=True, exist_ok=True)

    archives = {}
    if any(s.get("generator") == "synthetic" for s in selected):
        synth = data.get("synthetic", {})
        synthetic.generate(RAW, seed=synth.get("seed", 20200420), scale=synth.get("scale", 1.0))
    for src in selected:
        if src.get("generator"):
            continue
        res = fetch.fetch(src, RAW, mirror=data.get("mirror"), timeout=dl["timeout"],
                          retries=dl["retries"], backoff=dl["backoff"])
        archives[src["id"]] = {"file": src["file"], "sha256": res.sha256, "size": res.size}

    manifest = ingest.ingest_sources(selected, RAW, MANIFEST, STORE, params["ingest"])
    summary = ingest.summarize(manifest)
    summary["profile"] = data["profile"]
    summary["archives"] = archives
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plots.class_samples(manifest, STORE, REPORTS / "samples.png", title=f"profile {data['profile']}: random images per class")
    return 0


if __name__ == "__main__":
    run_stage("download", main)
