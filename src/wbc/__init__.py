"""wbc-repro: reproducible white-blood-cell dataset pipeline (PBC, Raabin-WBC)."""

from wbc.core import dispatch as _dispatch

# Before NumPy, OpenCV, OpenBLAS or FAISS load anywhere in the process: the same SIMD code on every
# x86-64 CPU with AVX2 (wbc.core.dispatch; $WBC_CPU_DISPATCH=native opts out).
_dispatch.pin_environment()

__version__ = "0.1.0"

#: The five canonical white-blood-cell classes, in the order used for label indices.
LABELS = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
