"""``marginface serve``: the REST API under uvicorn."""

from __future__ import annotations

import argparse

from service.cli.common import Subcommands, add_common, settings_from


def register(sub: Subcommands) -> None:
    """Add the command."""
    serve = sub.add_parser("serve", help="run the REST API")
    add_common(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--gallery", help="gallery folder (default: var/gallery)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API with uvicorn."""
    import faulthandler
    import signal

    import uvicorn

    from service.app import create_app
    from service.http_protocol import http_protocol
    from service.metrics import configure_logging
    from service.resources import Resources

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    # `kill -USR1 <pid>` prints every thread's stack to stderr (what is a stuck server doing?)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Open (and self-check) everything before uvicorn starts, so that a device that cannot run
    # the models (device=cuda without a working CUDA provider) stops here with a clear message.
    resources = Resources.open(settings)
    app = create_app(settings, resources=resources)
    # uvicorn's own loggers propagate to the root handler (JSON lines); the access log is ours
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        workers=1,
        http=http_protocol(),  # unparseable requests get the JSON error body too
    )
    resources.close()
    return 0
