"""The embedded synthetic dataset: drawn blood-smear crops in the layouts of the real archives.

`generate(out_dir, seed, scale)` writes four zip archives (the `synth_*` sources of
`sources.yaml`) and `synthetic_truth.csv`, so the whole pipeline runs offline:

- `synth_PBC_dataset_normal_DIB.zip`: `PBC_dataset_normal_DIB/<class>/<PREFIX>_<n>.jpg`, the 8 PBC
  folders (5 white-blood-cell classes + erythroblast, ig, platelet), 360x363 JPEG crops.
- `synth_Train.zip`, `synth_TestA.zip`: `<Part>/<Class>/<date>_<n>.jpg`, 575x575 JPEG crops.
- `synth_TestB.zip`: the same layout seen through "another camera and microscope" (other colour
  balance, blur, lower native resolution upscaled, more noise).

How a picture is made: a *scene* (red cells, platelets, one white cell at the origin, smear stain)
is drawn in micrometres from a per-image RNG; it is rasterised as stain densities and turned into
colour with Beer-Lambert absorption over the camera's background light; a *view* (shift, zoom,
focus blur, exposure, sensor noise, JPEG quality) then crops the rendered field. Near-duplicates are
several views of one larger rendered field, so a shift reveals new background.

Ground truth (`synthetic_truth.csv`, one row per archive member, sorted by source, member):
`source, file, member, class_folder, label, true_label, kind, group, detail, sha256`.
`label` is what the class folder says (canonical label or `excluded`), `true_label` what the cell
is (a class name such as `neutrophil` or `platelet`; empty for non-images). `kind`: `original`,
`near_duplicate`, `exact_copy`, `label_conflict`, `broken` (detail `truncated`, `zero` or
`ds_store`), `odd_mode` (detail `mode L|CMYK|P|RGBA|I;16`). `group` (`nd…`, `ec…`, `lc…`) links the
members of a duplicate group: its source image has kind `original`, the others the defect kind.

Deterministic: every image has its own RNG seeded from (seed, source, index), so the bytes do not
depend on worker count or order; zips have sorted members, fixed timestamps and ZIP_STORED.

The rooms, in the order a picture is made: `seeds` (per-picture RNG), `camera` (cameras, views,
encoding), `scene` (stains and drawing, `render_field`), `plan` (layouts, defects, names),
`archive` (render the plan, write zips and truth). The dataset API is re-exported here.
"""
from wbc.data.synthetic.archive import (KINDS, TRUTH_COLUMNS, TRUTH_FILE, ZIP_DATE, build, generate,
                                        iter_members, read_truth)
from wbc.data.synthetic.seeds import DEFAULT_SEED

__all__ = ["DEFAULT_SEED", "KINDS", "TRUTH_COLUMNS", "TRUTH_FILE", "ZIP_DATE", "build", "generate",
           "iter_members", "read_truth"]
