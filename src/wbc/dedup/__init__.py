"""Near-duplicate removal: the seed paper's hash rule, and a verified mode that is correct on real data.

Rooms: `fingerprints` (per-image hashes, sharpness, thumbnails, embedding), `candidates` (Hamming and
k-NN pair search), `index` (the same searches indexed for millions of images), `verify` (alignment
and correlation of a candidate pair), `groups` (the two modes' rules: candidates -> confirmed pairs
-> components -> kept image), `conflicts` (groups whose members carry different labels), `across`
(duplicates between sets, e.g. splits), `spill` (memory-mapped arrays) and `run` (the stage on a
manifest).

Each mode decodes only what it needs (`hash_images(..., parts=PARTS[mode])`):
  - paper features (full decode, exactly as `imagehash` sees the file): AHash and PHash (64-bit,
    computed by `imagehash` itself) and sharpness (mean Sobel gradient magnitude of the greyscale
    image at full resolution);
  - verification features (JPEG decoded at reduced scale, about 4x cheaper): sha256, grey thumbnails
    at three zooms and a shift-robust embedding (low-frequency Fourier magnitude of the thumbnail),
    plain and zoomed in by `EMB_ZOOM`.
Paper features missing for an image that ends up in a group (verified mode) are computed then, from
the same loader: sharpness decides the kept image and the hash distances are reported.

  1. candidates: paper mode, the vectorised, blocked Hamming search over packed uint64 codes
     (`hamming_pairs`); verified mode, the k nearest neighbours of the embedding, plus the nearest
     plain embeddings of each image's zoomed-in embedding (`knn_zoom`: a copy imaged at a higher
     magnification looks like the other image zoomed in). Byte-identical images (same sha256) are
     duplicates in both modes.
  2. verification (verified mode): alignment by band-limited phase correlation over a small zoom
     search, then normalised cross-correlation of the aligned thumbnails, separately over the central
     disc (the white cell) and over its surroundings (red cells that move with it in a re-imaged
     field); score = min of the two, and the centred cells must coincide (small translation; see
     `verify_pairs`). A coarse pass on half-size thumbnails screens every candidate; only pairs it
     does not rule out get the full-size verification (`confirm`).
  3. groups: connected components by breadth-first search; a group keeps its sharpest image,
     ties broken by the smallest key.
"""
