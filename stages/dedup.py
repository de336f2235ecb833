"""Stage `dedup`: remove re-imaged cells (dedup.mode: verified | paper), resolve label conflicts,
write the kept manifest and the dedup reports. Params: dedup.  Outputs: see dvc.yaml."""
from __future__ import annotations

from pathlib import Path

from wbc import dedup_run
from wbc.ingest import read_manifest
from wbc.params import load_params, run_stage

MANIFEST = Path("data/interim/manifest.csv")
STORE = Path("data/interim/store")
KEPT = Path("data/interim/kept.csv")
REPORTS = Path("reports/dedup")


def main() -> int:
    params = load_params()["dedup"]
    manifest = read_manifest(MANIFEST)
    outcome = dedup_run.run(manifest, STORE, params)
    dedup_run.save(outcome, KEPT, REPORTS)
    dedup_run.montage(outcome.groups, STORE, manifest, REPORTS / "groups.png")
    t, pairs = outcome.summary["totals"], outcome.summary["pairs"]
    print(f"dedup ({params['mode']}): in {t['in']}, kept {t['kept']}, duplicates removed {t['duplicates_removed']}, "
          f"conflicts dropped {t['conflicts_dropped']}, quarantined {t['quarantined']}")
    for mode, p in pairs.items():
        print(f"  {mode:>8}: {p['candidate_pairs']} candidate pairs, {p['confirmed_pairs']} confirmed, {p['groups']} groups")
    return 0


if __name__ == "__main__":
    run_stage("dedup", main)
