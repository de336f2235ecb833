"""`wbc serve`: a local web page to classify a lab's images and review the pipeline's results."""
from __future__ import annotations

import argparse
from pathlib import Path

from wbc.core.errors import WbcError
from wbc.apps.serve import run as run_server
from wbc.apps.serve_config import ServeConfig, check_host, default_model, upload_limits

HELP = "local web page: classify images and zip files, review reports/ (http://127.0.0.1:8000)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("--model", metavar="MODEL_FILE", type=Path,
                        help="a trained model file (default: models/headline-<lowest seed>.ckpt "
                             "when present; the page says when there is none)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (the page has no login: anyone who can reach it can use it)")
    parser.add_argument("--max-upload-mb", type=int, metavar="MB",
                        help="total size of one upload (default: serve.max_upload_mb in params.yaml, else 200)")
    parser.add_argument("--max-files", type=int, metavar="N",
                        help="files in one upload, an archive counting as one (default: serve.max_files, else 500)")
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="folder shown on the Results page (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The server settings: flags first, then params.yaml's `serve` section, then the defaults."""
    check_host(args.host, args.allow_remote)
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-files", args.max_files),
                        ("--batch-size", args.batch_size)):
        if value is not None and value <= 0:
            raise WbcError(f"{flag} must be a positive integer, got {value}")
    if not 0 < args.port < 65536:
        raise WbcError(f"--port must be between 1 and 65535, got {args.port}")
    max_mb, max_files = upload_limits()
    return ServeConfig(model=args.model if args.model is not None else default_model(),
                       reports=args.reports, max_upload_bytes=(args.max_upload_mb or max_mb) * 2**20,
                       max_files=args.max_files or max_files, batch_size=args.batch_size, device=args.device,
                       host=args.host, port=args.port, allow_remote=args.allow_remote)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; a refused host or an unreadable checkpoint is a one-line error."""
    run_server(config_from_args(args))
    return 0
