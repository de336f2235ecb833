"""The local web page of `wbc serve` (FastAPI): classify a lab's images, review the pipeline's results.

`create_app(config)` builds the app; see `wbc.webapp.app` for the routes, `wbc.webapp.uploads`
(streamed, capped uploads), `wbc.webapp.classify` (predict_files on an upload) and
`wbc.webapp.results` (what reports/ holds). The pages are static files in src/wbc/web/.
"""
from wbc.webapp.app import create_app

__all__ = ["create_app"]
