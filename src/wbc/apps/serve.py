"""`wbc serve`: the runner of the local web page (settings: `wbc.apps.serve_config`).

- `check_port(host, port)`: a port in use is a clear error before the model loads.
- `run(config)`: build the app and serve it with uvicorn (blocks until Ctrl-C).
"""
from __future__ import annotations

import socket
import sys

from wbc.apps.serve_config import ServeConfig, check_host, is_loopback
from wbc.core.errors import WbcError


def check_port(host: str, port: int) -> None:
    """Refuse early (before loading the model) when the address cannot be listened on, e.g. a port in use."""
    name = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in name else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((name, port))
        except OSError as exc:
            raise WbcError(f"cannot listen on {host} port {port}: {exc.strerror or exc} "
                           "(is another server using it? choose another with --port)") from None


def run(config: ServeConfig) -> None:
    """Check the host and port, build the app (loads the model) and serve until interrupted."""
    # lazy: uvicorn and FastAPI take a second to import, and `wbc --help` must stay fast
    import uvicorn

    from wbc.apps.webapp import create_app

    check_host(config.host, config.allow_remote)
    check_port(config.host, config.port)
    app = create_app(config)
    if not is_loopback(config.host):
        print(f"wbc serve: WARNING: listening on {config.host}: anyone who can reach this machine can use "
              "the page (no login)", file=sys.stderr)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"wbc serve: http://{shown}:{config.port}/  (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
