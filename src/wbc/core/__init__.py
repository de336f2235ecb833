"""Core: what every room uses — the error types (`errors`), params.yaml reading and stage running
(`params`), worker counts (`parallel`), the SIMD dispatch of the numeric libraries (`dispatch`).
Imports nothing else of wbc."""
