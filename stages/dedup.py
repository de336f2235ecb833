"""Stage `dedup`: remove re-imaged cells (dedup.mode: verified | paper), resolve label conflicts,
write the kept manifest and the dedup reports. Params: dedup.  dvc.yaml passes every path."""
from __future__ import annotations

import argparse
from pathlib import Path

from wbc.dedup import run as dedup_run
from wbc.data.ingest import read_manifest
from wbc.core.params import load_params, run_stage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--manifest", "--store", "--kept", "--reports"):
        parser.add_argument(flag, type=Path, required=True)
    args = parser.parse_args()
    params = load_params()["dedup"]
    manifest = read_manifest(args.manifest)
    outcome = dedup_run.run(manifest, args.store, params)
    dedup_run.save(outcome, args.kept, args.reports)
    dedup_run.montage(outcome.groups, args.store, manifest, args.reports / "groups.png")
    t, pairs = outcome.summary["totals"], outcome.summary["pairs"]
    print(f"dedup ({params['mode']}): in {t['in']}, kept {t['kept']}, duplicates removed {t['duplicates_removed']}, "
          f"conflicts dropped {t['conflicts_dropped']}, quarantined {t['quarantined']}")
    for mode, p in pairs.items():
        print(f"  {mode:>8}: {p['candidate_pairs']} candidate pairs, {p['confirmed_pairs']} confirmed, {p['groups']} groups")
    return 0


if __name__ == "__main__":
    run_stage("dedup", main)
