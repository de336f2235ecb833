"""The local web page of `wbc serve` (FastAPI): classify a lab's images, review the pipeline's results.

`create_app(config)` builds the app; see `wbc.apps.webapp.app` for the routes, `wbc.apps.webapp.uploads`
(streamed, capped uploads), `wbc.apps.webapp.classify` (predict_files on an upload) and
`wbc.apps.webapp.results` (what reports/ holds). The pages are static files in src/wbc/apps/web/.
"""
from wbc.apps.webapp.app import create_app

__all__ = ["create_app"]
