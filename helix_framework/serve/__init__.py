"""`helix serve`: the lab surface, an HTTP API over warm models.

`build_app` gives the Starlette app; `serve` runs it on uvicorn bound to
the given host (loopback unless a token is set).
"""

from __future__ import annotations

import logging

from helix_framework.errors import ServeError
from helix_framework.serve.app import ServeOptions, build_app
from helix_framework.serve.guard import is_loopback

__all__ = ["ServeError", "ServeOptions", "build_app", "serve"]


def serve(options: ServeOptions) -> None:
    """Run the server until interrupted."""
    import uvicorn

    if not is_loopback(options.host) and not options.token:
        raise ServeError(f"--host {options.host} is not loopback: give --token so every request must authenticate")
    app = build_app(options)
    app.state.lab.preload()
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info", access_log=False,
                            server_header=False, date_header=False, lifespan="off")
    logging.getLogger(__name__).info("helix serve on http://%s:%d", options.host, options.port)
    uvicorn.Server(config).run()
