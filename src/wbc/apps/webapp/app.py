"""The FastAPI app of `wbc serve`: two pages (Classify, Results) and the JSON API behind them.

Routes
- `GET /`, `GET /results`: the pages (static HTML from src/wbc/apps/web/, vanilla JS, no CDN).
- `GET /api/info`: the checkpoint (or why there is none) and the upload limits.
- `POST /api/classify`: multipart upload (field `files`) -> predictions JSON; 413 over a limit.
- `GET /api/jobs/{job}/predictions.csv`, `GET /api/jobs/{job}/thumbs/{row}.jpg`.
- `GET /api/results`: what reports/ holds; `GET /reports/{path}`: its figures.

Local by design: the Host header must name this machine unless remote access was allowed (no
DNS rebinding), a cross-site POST is refused, and the Content-Security-Policy only allows the
page's own scripts, styles and images.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from wbc.core.errors import WbcError
from wbc.apps.serve_config import HEADLINE_PATTERN, ServeConfig, is_loopback
from wbc.apps.webapp.classify import Job, JobStore, classify
from wbc.apps.webapp.model import PageModel, load_page_model
from wbc.apps.webapp.results import figure_path, results_payload
from wbc.apps.webapp.uploads import SavedUpload, UploadRejected, receive_files
from wbc.learn.device import select_device

#: Static files of the pages (HTML, CSS, JS): package data of wbc.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: Only the page's own resources; inline styles for the Markdown tables' column alignment.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
LOG = logging.getLogger("wbc.serve")


@dataclass
class ServerState:
    """The loaded model (or why there is none), the jobs and the upload folder of one app."""

    config: ServeConfig
    tmp_root: Path
    model: PageModel | None = None
    model_error: str = ""
    jobs: JobStore = field(default_factory=JobStore)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_classify(self, uploads: list[SavedUpload], folder: Path) -> Job:
        """Classify one upload (one at a time: the model and the CPU cores are shared)."""
        with self.lock:
            return classify(self.model, uploads, folder, batch_size=self.config.batch_size)

    def info(self) -> dict[str, Any]:
        """GET /api/info."""
        return {"model": self.model.describe() if self.model else None, "model_error": self.model_error,
                "limits": {"max_upload_bytes": self.config.max_upload_bytes, "max_files": self.config.max_files},
                "workspace": str(self.config.workspace.resolve())}


def load_model(state: ServerState) -> None:
    """Load the configured model file into `state`, or record why there is none.

    A model file given explicitly that cannot be read raises WbcError (the command stops).
    """
    if state.config.model is None:
        state.model_error = (f"No checkpoint: no model file ({HEADLINE_PATTERN}) in {state.config.workspace.resolve()}. "
                             "Train one (`dvc repro`) or start the page with `wbc serve --model MODEL_FILE`.")
        return
    state.model = load_page_model(state.config.model, device=select_device(state.config.device))


def _host_name(value: str) -> str:
    """The host of a Host header or URL netloc, without port and brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def local_guard(config: ServeConfig):
    """Middleware: Host header naming this machine (unless remote allowed), same-site POST, CSP."""

    async def guard(request: Request, call_next: Any) -> Response:
        host = _host_name(request.headers.get("host", ""))
        if not (config.allow_remote or is_loopback(host)):
            return JSONResponse({"detail": f"host {host!r} refused: the page answers on this machine only"},
                                status_code=403)
        origin = request.headers.get("origin")
        if request.method == "POST" and origin and _host_name(urlsplit(origin).netloc) != host:
            return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return guard


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def classify_upload(request: Request) -> Response:
    """POST /api/classify: stream the files to a job folder, predict, answer the page's JSON."""
    state: ServerState = request.app.state.wbc
    if state.model is None:
        return _error(503, state.model_error)
    folder = Path(tempfile.mkdtemp(prefix="job-", dir=state.tmp_root))
    try:
        uploads = await receive_files(request.headers, request.stream(), folder,
                                      max_bytes=state.config.max_upload_bytes, max_files=state.config.max_files)
        job = await run_in_threadpool(state.run_classify, uploads, folder)
        summary = await run_in_threadpool(job.summary)
    except UploadRejected as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return _error(exc.status, exc.message)
    except Exception as exc:  # keep serving: one failed upload must not stop the page
        shutil.rmtree(folder, ignore_errors=True)
        LOG.exception("classification failed")
        return _error(500, f"classification failed: {type(exc).__name__}: {exc}")
    state.jobs.add(job)
    return JSONResponse(summary)


async def info(request: Request) -> dict[str, Any]:
    """GET /api/info: the checkpoint, or why there is none, and the upload limits."""
    return request.app.state.wbc.info()


def _job(request: Request, job_id: str) -> Job | None:
    return request.app.state.wbc.jobs.get(job_id)


async def predictions_csv(request: Request, job_id: str) -> Response:
    """GET /api/jobs/{job}/predictions.csv: the same CSV as `wbc predict --out`."""
    job = _job(request, job_id)
    if job is None:
        return _error(404, "unknown or expired job: classify the files again")
    return Response(job.csv(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="predictions.csv"'})


async def thumbnail(request: Request, job_id: str, row: int) -> Response:
    """GET /api/jobs/{job}/thumbs/{row}.jpg: a small JPEG of one classified image."""
    job = _job(request, job_id)
    data = None if job is None else await run_in_threadpool(job.thumbnail, row)
    if data is None:
        return _error(404, "no thumbnail")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def build_routes(app: FastAPI, config: ServeConfig, reports: Path) -> None:
    """Attach the pages, the API and the static files to `app`."""
    app.add_api_route("/", lambda: FileResponse(WEB_DIR / "classify.html"), methods=["GET"])
    app.add_api_route("/results", lambda: FileResponse(WEB_DIR / "results.html"), methods=["GET"])
    app.add_api_route("/api/info", info, methods=["GET"])
    app.add_api_route("/api/classify", classify_upload, methods=["POST"])
    app.add_api_route("/api/jobs/{job_id}/predictions.csv", predictions_csv, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/thumbs/{row}.jpg", thumbnail, methods=["GET"])

    async def results() -> dict[str, Any]:
        return await run_in_threadpool(results_payload, reports, config.workspace)

    async def report_file(path: str) -> Response:
        found = figure_path(reports, path)
        return FileResponse(found) if found else _error(404, f"no figure {path!r} in reports/")

    app.add_api_route("/api/results", results, methods=["GET"])
    app.add_api_route("/reports/{path:path}", report_file, methods=["GET"])
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")


def create_app(config: ServeConfig) -> FastAPI:
    """The app for `config`: checkpoint loaded now (a bad explicit checkpoint raises WbcError)."""
    state = ServerState(config, Path(tempfile.mkdtemp(prefix="wbc-serve-")))
    try:
        load_model(state)
    except WbcError:
        shutil.rmtree(state.tmp_root, ignore_errors=True)
        raise

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.jobs.clear()
        shutil.rmtree(state.tmp_root, ignore_errors=True)

    app = FastAPI(title="wbc serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.wbc = state
    app.middleware("http")(local_guard(config))
    reports = config.reports if config.reports.is_absolute() else config.workspace / config.reports
    build_routes(app, config, reports)
    return app
