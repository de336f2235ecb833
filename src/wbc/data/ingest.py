"""Ingest: read every member of the source archives into the manifest and the image store.

Each file member becomes one manifest row (columns in MANIFEST_COLUMNS, see docs/design.md):
macOS metadata (`__MACOSX/`, AppleDouble `._*`), non-image extensions and links are `skipped`;
every image-extension file is fully decoded (wbc.data.store.decode, in worker processes) and is `ok`
or `quarantined` with the reason; ok images with a canonical label go into the image store.
Class folders come from the registry (`root`, `classes`, `exclude`).
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import posixpath
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from wbc import LABELS
from wbc.data.archives import Entry, FILE, Limits, Skipped, iter_members
from wbc.core.errors import ConfigError
from wbc.data.store import DEFAULT_MAX_PIXELS, DEFAULT_SHARD_BYTES, BadImage, StoreWriter, decode

MANIFEST_COLUMNS = [
    "id", "source", "role", "member", "class_folder", "label", "sha256", "bytes",
    "width", "height", "format", "mode", "status", "reason", "shard", "offset", "length",
]
INT_COLUMNS = ("bytes", "shard", "offset", "length")
NULLABLE_INT_COLUMNS = ("width", "height")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
EXCLUDED = "excluded"
OK, QUARANTINED, SKIPPED = "ok", "quarantined", "skipped"
_BATCH = 64

# (class_folder-less) decode result: (reason, format, mode, width, height); reason "" when ok
DecodeResult = tuple[str, str, str, int | None, int | None]


@dataclass(frozen=True)
class IngestLimits:
    """The `ingest` params: archive limits, decoding guard, store shard size and worker count."""

    archive: Limits
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard_bytes: int = DEFAULT_SHARD_BYTES
    workers: int = 0  # 0 = all cores

    @classmethod
    def coerce(cls, limits: Mapping[str, Any] | IngestLimits | None) -> IngestLimits:
        """From the params `ingest` mapping (missing keys take the defaults)."""
        if isinstance(limits, IngestLimits):
            return limits
        limits = dict(limits or {})
        return cls(
            archive=Limits.coerce(limits),
            max_pixels=int(limits.get("max_pixels") or DEFAULT_MAX_PIXELS),
            shard_bytes=int(limits.get("shard_bytes") or DEFAULT_SHARD_BYTES),
            workers=int(limits.get("workers") or 0),
        )

    def n_workers(self) -> int:
        """The number of decoding processes (1 = decode in this process)."""
        return max(1, self.workers or os.cpu_count() or 1)


# ----------------------------------------------------------------------------- classification


def check_source(source: Mapping[str, Any]) -> None:
    """Raise ConfigError when a registry source cannot be ingested (no id/file, bad labels/role)."""
    sid = source.get("id")
    if not sid or "/" in str(sid):
        raise ConfigError(f"source without a valid id: {dict(source)!r}")
    if source.get("role") not in ("pool", "external"):
        raise ConfigError(f"source {sid}: role must be pool or external, got {source.get('role')!r}")
    bad = sorted(set((source.get("classes") or {}).values()) - set(LABELS))
    if bad:
        raise ConfigError(f"source {sid}: classes map to unknown labels {bad}; valid: {list(LABELS)}")


def class_of(member: str, source: Mapping[str, Any]) -> tuple[str, str]:
    """`(class_folder, label)` of a member path, from the registry entry of its source.

    With `root` set, the class folder is the component right below the root; with `root` null it
    is the deepest folder component that names a class or an excluded folder. Names are matched
    case-sensitively first, then case-insensitively. `("", "")` when there is no class folder.
    Sources with `class_from_parent` (a user's own folders) take the parent folder as class folder.
    """
    names: dict[str, str] = dict(source.get("classes") or {})
    names.update({name: EXCLUDED for name in source.get("exclude") or []})
    dirs = member.split("/")[:-1]
    if source.get("class_from_parent"):
        candidates = dirs[-1:]
    elif source.get("root"):
        root = [p for p in str(source["root"]).split("/") if p]
        if len(dirs) <= len(root) or any(a != b and a.casefold() != b.casefold() for a, b in zip(dirs, root)):
            return "", ""
        candidates = [dirs[len(root)]]
    else:
        candidates = dirs
    folded: dict[str, str] = {}
    for name, label in names.items():
        folded.setdefault(name.casefold(), label)
    for comp in reversed(candidates):
        if comp in names:
            return comp, names[comp]
    for comp in reversed(candidates):
        if comp.casefold() in folded:
            return comp, folded[comp.casefold()]
    if source.get("class_from_parent") and candidates:
        return candidates[0], ""
    return "", ""


def skip_reason(member: str) -> str:
    """Why a member is not decoded ("" when it is an image candidate)."""
    parts = member.split("/")
    if "__MACOSX" in parts[:-1]:
        return "macOS metadata: __MACOSX/ folder"
    if parts[-1].startswith("._"):
        return "macOS metadata: AppleDouble ._ file"
    ext = posixpath.splitext(parts[-1])[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image extension: {ext or '(none)'}"
    return ""


# ----------------------------------------------------------------------------- decoding workers


def _decode_one(data: bytes, max_pixels: int) -> DecodeResult:
    try:
        d = decode(data, max_pixels)
    except BadImage as exc:
        return exc.reason, exc.format, exc.mode, None, None
    except Exception as exc:  # noqa: BLE001  never lose a whole ingest to one odd file
        return f"corrupt: {type(exc).__name__}: {exc}", "", "", None, None
    return "", d.format, d.mode, d.width, d.height


def _decode_batch(datas: list[bytes | None], max_pixels: int) -> list[DecodeResult | None]:
    return [None if d is None else _decode_one(d, max_pixels) for d in datas]


def _mp_context():
    # fork: workers need nothing from __main__ (stage scripts stay importable-safe); spawn elsewhere
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


DecodeMap = Callable[[Iterable[tuple[Any, bytes | None]]], Iterator[tuple[Any, DecodeResult | None]]]


@contextmanager
def decoder(max_pixels: int, workers: int) -> Iterator[DecodeMap]:
    """A function mapping `(meta, data or None)` pairs to `(meta, result or None)`, in input order,
    decoding in `workers` processes (batches, bounded number in flight)."""
    if workers <= 1:
        yield lambda items: ((meta, None if d is None else _decode_one(d, max_pixels)) for meta, d in items)
        return
    with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:

        def run(items: Iterable[tuple[Any, bytes | None]]) -> Iterator[tuple[Any, DecodeResult | None]]:
            pending: deque[tuple[list, Future]] = deque()
            for batch in _batched(items, _BATCH):
                pending.append((batch, pool.submit(_decode_batch, [d for _, d in batch], max_pixels)))
                if len(pending) >= 2 * workers:
                    yield from _drain(*pending.popleft())
            while pending:
                yield from _drain(*pending.popleft())

        yield run


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _drain(batch: list, future: Future) -> Iterator[tuple[Any, DecodeResult | None]]:
    for (meta, _), result in zip(batch, future.result()):
        yield meta, result


# ----------------------------------------------------------------------------- ingest


def _row(source: Mapping[str, Any], member: str, sha256: str, size: int) -> dict[str, Any]:
    class_folder, label = class_of(member, source)
    return {
        "id": f"{source['id']}/{member}", "source": source["id"], "role": source["role"], "member": member,
        "class_folder": class_folder, "label": label, "sha256": sha256, "bytes": size,
        "width": None, "height": None, "format": "", "mode": "", "status": "", "reason": "",
        "shard": -1, "offset": -1, "length": -1,
    }


def _finish(row: dict[str, Any], data: bytes, result: DecodeResult | None, store: StoreWriter) -> dict[str, Any]:
    """Fill status/reason/size/format/mode and store ok canonical images."""
    if result is None:
        row["status"], row["reason"] = SKIPPED, skip_reason(row["member"])
        return row
    reason, row["format"], row["mode"], width, height = result
    if reason:
        row["status"], row["reason"] = QUARANTINED, reason
        return row
    row["status"], row["width"], row["height"] = OK, width, height
    if row["label"] in LABELS:
        row["shard"], row["offset"], row["length"] = store.add(data)
    return row


def ingest_archive(
    source: Mapping[str, Any], path: Path, limits: IngestLimits, store: StoreWriter, decode_map: DecodeMap
) -> list[dict[str, Any]]:
    """Manifest rows of one archive (or folder) of `source`, in member-name order."""
    skipped: list[Skipped] = []
    bar = tqdm(desc=f"ingest {source['id']}", unit="file", disable=None, leave=False)

    def set_total(entries: list[Entry]) -> None:
        bar.total = sum(e.kind == FILE for e in entries)

    def stream() -> Iterator[tuple[tuple[dict, bytes], bytes | None]]:
        for m in iter_members(path, limits.archive, on_skip=skipped.append, on_listing=set_total):
            row = _row(source, m.name, hashlib.sha256(m.data).hexdigest(), m.size)
            yield (row, m.data), (None if skip_reason(m.name) else m.data)

    rows = []
    with bar:
        for (row, data), result in decode_map(stream()):
            rows.append(_finish(row, data, result, store))
            bar.update()
    for s in skipped:
        row = _row(source, s.name, "", 0)
        row["status"], row["reason"] = SKIPPED, s.reason
        rows.append(row)
    return rows


def ingest_items(
    items: list[tuple[Mapping[str, Any], str | Path]],
    manifest_path: str | Path,
    store_dir: str | Path,
    limits: Mapping[str, Any] | IngestLimits | None = None,
) -> pd.DataFrame:
    """Ingest `(source, archive-or-folder path)` pairs; write the manifest and the store."""
    lim = IngestLimits.coerce(limits)
    for source, _ in items:
        check_source(source)
    ids = [s["id"] for s, _ in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"duplicate source ids: {sorted(i for i, n in Counter(ids).items() if n > 1)}")
    Path(manifest_path).unlink(missing_ok=True)  # never leave an old manifest beside a new store
    rows: list[dict[str, Any]] = []
    with StoreWriter(store_dir, lim.shard_bytes) as store, decoder(lim.max_pixels, lim.n_workers()) as decode_map:
        for source, path in sorted(items, key=lambda item: item[0]["id"]):
            rows += ingest_archive(source, Path(path), lim, store, decode_map)
    manifest = manifest_frame(rows)
    write_manifest(manifest, manifest_path)
    return manifest


def ingest_sources(
    sources: list[Mapping[str, Any]],
    raw_dir: str | Path,
    manifest_path: str | Path,
    store_dir: str | Path,
    limits: Mapping[str, Any] | IngestLimits | None = None,
) -> pd.DataFrame:
    """Ingest the registry `sources` (archive = raw_dir/<source['file']>); return the manifest.

    `limits` is the params `ingest` section (max_pixels, max_member_bytes, max_total_bytes,
    shard_bytes; optional workers, 0 = all cores).
    """
    for source in sources:
        if not source.get("file"):
            raise ConfigError(f"source {source.get('id')!r} has no `file`")
    return ingest_items([(s, Path(raw_dir) / s["file"]) for s in sources], manifest_path, store_dir, limits)


# ----------------------------------------------------------------------------- manifest I/O


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> the manifest DataFrame (columns in order, sorted by id, typed)."""
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if df["id"].duplicated().any():
        raise ConfigError(f"duplicate manifest ids: {df.loc[df['id'].duplicated(), 'id'].head().tolist()}")
    return _typed(df.sort_values("id", kind="stable").reset_index(drop=True))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in MANIFEST_COLUMNS:
        if col in INT_COLUMNS:
            df[col] = df[col].astype("int64")
        elif col in NULLABLE_INT_COLUMNS:
            df[col] = pd.array([None if v is None or v == "" or pd.isna(v) else int(v) for v in df[col]], dtype="Int64")
        else:
            df[col] = df[col].fillna("").astype(str)
    return df


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    """Write the manifest CSV atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    manifest[MANIFEST_COLUMNS].to_csv(tmp, index=False)
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest (or kept.csv): strings stay strings ("" not NaN), ints are int64/Int64."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path} is not a manifest: missing columns {missing}")
    return _typed(df)


# ----------------------------------------------------------------------------- summary


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def _counts(group: pd.DataFrame) -> dict[str, Any]:
    status = group["status"]
    return {
        "files": int(len(group)),
        "ok": int((status == OK).sum()),
        "quarantined": int((status == QUARANTINED).sum()),
        "skipped": int((status == SKIPPED).sum()),
        "excluded": int((group["label"] == EXCLUDED).sum()),
        "stored": int((group["shard"] >= 0).sum()),
        "quarantined_reasons": dict(sorted(Counter(map(_reason_kind, group.loc[status == QUARANTINED, "reason"])).items())),
        "skipped_reasons": dict(sorted(Counter(map(_reason_kind, group.loc[status == SKIPPED, "reason"])).items())),
    }


def summarize(manifest: pd.DataFrame) -> dict[str, Any]:
    """Counts per source and class folder (`""` = no class folder), per source and overall.

    Each entry: files, ok, quarantined, skipped, excluded, stored and the reasons (by kind);
    files = ok + quarantined + skipped everywhere. Per source also `labels`: stored images per
    canonical label.
    """
    out: dict[str, Any] = {"sources": {}, "totals": _counts(manifest)}
    for sid, group in manifest.groupby("source", sort=True):
        classes = {}
        for folder, sub in group.groupby("class_folder", sort=True):
            classes[folder] = {"label": str(sub["label"].iloc[0]), **_counts(sub)}
        stored = group[group["shard"] >= 0]
        out["sources"][sid] = {
            "role": str(group["role"].iloc[0]),
            "classes": classes,
            "labels": {label: int((stored["label"] == label).sum()) for label in LABELS},
            "totals": _counts(group),
        }
    return out
