"""Core: what every room uses — the error types (`errors`), params.yaml reading and stage running
(`params`), worker counts (`parallel`). Imports nothing else of wbc."""
