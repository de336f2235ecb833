"""wbc-repro: reproducible white-blood-cell dataset pipeline (PBC, Raabin-WBC)."""

__version__ = "0.1.0"

#: The five canonical white-blood-cell classes, in the order used for label indices.
LABELS = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
