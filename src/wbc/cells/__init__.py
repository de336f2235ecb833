"""Cells: measuring one white cell — nucleus segmentation (`segment`, `segment_plot`), the red-cell
ruler (`redcells`), cell crops (`cellcrop`), colour standardisation (`stainnorm`), the shape and
colour features (`features`) and the features stage (`featurize`). Imports data and core."""
