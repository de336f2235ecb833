"""Groups whose members carry different labels: drop them all, or keep the strict majority label."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from wbc.core.errors import ConfigError
from wbc.dedup.groups import GroupResult

#: Why a member of a group is not kept (`Resolution.reason`).
DUPLICATE = "duplicate"            # a less sharp copy of the kept image (or of a kept same-label image)
LABEL_CONFLICT = "label conflict"  # on_conflict=drop: every member of a group with different labels
MINORITY_LABEL = "minority label"  # on_conflict=majority: its label is not the group's majority label
LABEL_TIE = "label tie"            # on_conflict=majority: no label has a strict majority -> group dropped
CONFLICT_RULES = ("drop", "majority")


@dataclass(frozen=True)
class Resolution:
    """Per image (rows of the GroupResult): kept or not, conflict-group member, winning label, reason."""

    keep: np.ndarray      # bool
    conflict: np.ndarray  # bool: member of a group whose members carry different labels
    winner: np.ndarray    # object: the majority label that won its conflict group ("" elsewhere)
    reason: np.ndarray    # object: why the image is dropped (DUPLICATE, LABEL_CONFLICT, ...; "" when kept)


def resolve_conflicts(result: GroupResult, labels: Sequence[str], sharp: np.ndarray, keys: Sequence[Any],
                      on_conflict: str = "drop") -> Resolution:
    """Apply the label-conflict rule to groups whose members carry different labels.

    Groups with one label keep their sharpest image (`result.keep`), the others are DUPLICATE.
    In a conflict group, on_conflict="drop" drops every member (LABEL_CONFLICT); "majority" keeps the
    sharpest member carrying the label held by strictly more members than any other (ties in sharpness:
    the smallest key): the other members with that label are DUPLICATE, the rest MINORITY_LABEL. When
    two labels share the highest count the group is undecidable and every member is dropped (LABEL_TIE).
    """
    if on_conflict not in CONFLICT_RULES:
        raise ConfigError(f"dedup on_conflict {on_conflict!r} is unknown; valid: {', '.join(CONFLICT_RULES)}")
    labels = np.asarray(labels, dtype=object)
    keep = result.keep.copy()
    reason = np.where(keep | (result.group_sizes() < 2), "", DUPLICATE).astype(object)
    conflict = np.zeros(len(keep), bool)
    winner = np.full(len(keep), "", dtype=object)
    nlab = pd.DataFrame({"g": result.group, "label": labels}).groupby("g")["label"].nunique()
    for g in nlab.index[nlab > 1]:
        members = np.flatnonzero(result.group == g)
        conflict[members], keep[members] = True, False
        if on_conflict == "drop":
            reason[members] = LABEL_CONFLICT
            continue
        counts = pd.Series(labels[members]).value_counts()
        if counts.iloc[0] == counts.iloc[1]:
            reason[members] = LABEL_TIE
            continue
        maj = counts.index[0]
        winner[members] = maj
        reason[members] = np.where(labels[members] == maj, DUPLICATE, MINORITY_LABEL)
        best = min((m for m in members if labels[m] == maj), key=lambda m: (-float(sharp[m]), str(keys[m])))
        keep[best], reason[best] = True, ""
    return Resolution(keep, conflict, winner, reason)
