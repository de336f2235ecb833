"""Classifying an upload: `wbc.apps.predict.predict_files` on the saved files, as `wbc predict` does.

A `Job` keeps one upload's files (in a temporary folder), the prediction frame with each path
replaced by the uploaded name (`cells.zip:slide/a.jpg`, as `wbc predict cells.zip` run beside the
file would write it), and serves its CSV (byte for byte `wbc predict --out`'s format), a JSON
summary for the page (rows, differential count with Wilson 95 % intervals, notes) and small
JPEG thumbnails (read again through the shared reader `wbc.dataset.inputs`, on demand).
`JobStore` keeps the last few jobs and deletes the folders of older ones.
"""
from __future__ import annotations

import io
import math
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wbc.dataset.inputs import IMAGE_SUFFIXES, InputItem, collect_inputs, iter_images
from wbc.apps.predict import differential_count, predictions_csv
from wbc.apps.webapp.model import PageModel
from wbc.apps.webapp.uploads import SavedUpload

#: Thumbnail size (longest side, px) and JPEG quality.
THUMB_SIZE = 96
THUMB_QUALITY = 85
#: Jobs kept for CSV downloads and thumbnails; older ones are deleted.
KEEP_JOBS = 8


def _finite(value: Any) -> Any:
    """JSON-safe: NaN becomes None."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _uploaded_name(path: str, folder: Path) -> tuple[int, str]:
    """(upload index, name shown) of a predict_files path `<folder>/<i>/<name>[:member]`."""
    index, rest = path[len(str(folder)) + 1:].split(os.sep, 1)
    return int(index), rest


def _without_folder(error: str, upload: SavedUpload) -> str:
    """An error text naming the upload as uploaded (`bomb.zip`), not by its temporary path."""
    return error.replace(str(upload.path), upload.name)


@dataclass
class Job:
    """One classified upload: files in `folder`, the renamed prediction frame, the model's classes."""

    id: str
    folder: Path
    uploads: list[SavedUpload]
    frame: pd.DataFrame
    classes: list[str]
    row_upload: list[int] = field(default_factory=list)
    source_paths: list[str] = field(default_factory=list)
    _items: dict[str, InputItem] | None = None

    def csv(self) -> str:
        """The predictions CSV (paths are the uploaded names)."""
        return predictions_csv(self.frame)

    def notes(self) -> list[dict[str, str]]:
        """Uploads that gave no row (an archive without images), with the reason."""
        used = set(self.row_upload)
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        return [{"path": u.name, "error": f"no image found in this archive (image suffixes: {suffixes})"}
                for i, u in enumerate(self.uploads) if i not in used]

    def summary(self) -> dict[str, Any]:
        """The page's JSON: rows (probabilities in class order), differential count, notes."""
        prob_cols = [f"p_{c}" for c in self.classes]
        rows = [{"index": i, "path": r["path"], "label": r["label"], "confidence": _finite(float(r["confidence"])),
                 "probs": None if r["error"] else [float(r[c]) for c in prob_cols], "error": r["error"]}
                for i, r in enumerate(self.frame.to_dict("records"))]
        diff = differential_count(self.frame["label"].tolist(), self.classes)
        read = int((self.frame["error"] == "").sum())
        return {"job": self.id, "classes": self.classes, "rows": rows, "read": read,
                "unreadable": len(rows) - read, "notes": self.notes(),
                "differential": [{k: _finite(v) for k, v in d.items()} for d in diff.to_dict("records")]}

    def _item(self, row: int) -> InputItem | None:
        """The shared reader's item of a row (the uploads are listed once per job)."""
        if self._items is None:
            self._items = {it.name: it for it in collect_inputs([u.path for u in self.uploads])}
        return self._items.get(self.source_paths[row])

    def thumbnail(self, row: int) -> bytes | None:
        """A small JPEG of a row's image, or None when it has no image (unreadable input)."""
        if not 0 <= row < len(self.frame) or self.frame["error"].iat[row]:
            return None
        item = self._item(row)
        for _, image, _ in iter_images([item] if item else []):
            if image is None:
                return None
            image.thumbnail((THUMB_SIZE, THUMB_SIZE))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=THUMB_QUALITY)
            return buf.getvalue()
        return None


def classify(model: PageModel, uploads: list[SavedUpload], folder: Path, *, batch_size: int = 32) -> Job:
    """Predict every image of the uploads (one predict_files call, as `wbc predict a.zip b.png`)."""
    frame = model.predict_files([u.path for u in uploads], batch_size=batch_size)
    sources = frame["path"].tolist()
    located = [_uploaded_name(p, folder) for p in sources]
    frame["path"] = [name for _, name in located]
    frame["error"] = [_without_folder(err, uploads[i]) for err, (i, _) in zip(frame["error"], located)]
    return Job(uuid.uuid4().hex, folder, uploads, frame, model.classes, [i for i, _ in located], sources)


class JobStore:
    """The last `keep` jobs by id; adding one more deletes the oldest job's folder."""

    def __init__(self, keep: int = KEEP_JOBS) -> None:
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        """Keep `job`; drop (and delete) the oldest beyond `keep`."""
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                _, old = self._jobs.popitem(last=False)
                shutil.rmtree(old.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or already dropped."""
        with self._lock:
            return self._jobs.get(job_id)

    def clear(self) -> None:
        """Delete every job's folder (at shutdown)."""
        with self._lock:
            for job in self._jobs.values():
                shutil.rmtree(job.folder, ignore_errors=True)
            self._jobs.clear()
