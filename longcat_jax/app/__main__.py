"""`python -m longcat_jax.app`: the web app. It loads the models once, then serves every task of the CLI.

    python -m longcat_jax.app                                    # built-in tiny model (random weights), CPU or GPU
    python -m longcat_jax.app --model-path LongCat-Video --quantize int8 --port 7860

It binds to 127.0.0.1 (this machine only) unless `--host` says otherwise (a host:port it cannot bind is refused
before the models load), and makes no network call: Gradio's
analytics are off, and it serves files from `--output-dir` only (results, their provenance, uploads and Gradio's
working copies all go there; `confine.OutputFolderOnly` refuses any other path or URL). Gradio is an optional
extra (`pip install -e '.[app]'`); nothing else in longcat_jax imports it.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import os
import socket
import sys
from pathlib import Path

from longcat_jax.app.engine import AppSettings, Engine
from longcat_jax.app.form import DEFAULT_MAX_UPLOAD_MB
from longcat_jax.cli_logging import setup_cli_logging
from longcat_jax.compilation_cache import enable_compilation_cache
from longcat_jax.errors import InputError, LongCatError
from longcat_jax.pipelines.tasks import DTYPES
from longcat_jax.quantization import MODES as QUANTIZE_MODES

logger = logging.getLogger("longcat_jax.app")

MISSING_GRADIO = ("the app needs Gradio, an optional extra of longcat-jax: pip install -e '.[app]' "
                  "(or pip install 'gradio>=5,<7')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longcat_jax.app",
        description="A web app for LongCat-Video (JAX): every task of the CLI from a browser, the models kept loaded. "
        "Without --model-path: the tiny built-in model with random weights.",
    )
    add = parser.add_argument
    add("--model-path", type=Path,
        help="checkpoint folder (original download or `python -m convert` output), or a Hugging Face hub id, as the CLI")
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    add("--port", type=int, default=7860)
    add("--output-dir", type=Path, default=Path("outputs/app"), help="results, their provenance and uploads")
    add("--dtype", choices=tuple(DTYPES), help="default bfloat16 (float32 for the built-in model)")
    add("--quantize", choices=QUANTIZE_MODES, default="none", help="DiT weights loaded at start (the page may change it)")
    add("--context-parallel", type=int, metavar="N", help="split each video's tokens over N devices (default: all)")
    add("--fsdp", action="store_true", help="with several devices: store the DiT and text encoder split over them")
    add("--max-device-memory", metavar="SIZE",
        help="device-memory budget, e.g. 24GiB: the models are placed to fit it, and requests that cannot are refused")
    add("--compilation-cache", metavar="DIR|none",
        help="keep compiled programs in DIR so a restart skips compiling (default as the CLI's); none: off")
    add("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest image or video upload")
    return parser


def check_address(host: str, port: int) -> None:
    """Refuses a --port outside 1..65535 and a host:port the server could not bind (a port in use, a host that is
    not this machine's), by binding it as the server (uvicorn) does and releasing it: before the models load, not
    after minutes of warm-up."""
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port; give one in 1..65535, e.g. --port 7860")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]  # IPv4 or IPv6, as it resolves
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: a just-closed port is free
            probe.bind(address)
    except OSError as err:  # socket.gaierror (a host name that does not resolve) too
        reason = err.strerror or str(err)
        if err.errno in (errno.EADDRINUSE, errno.EACCES):  # EACCES: a port below 1024 without root
            raise InputError(f"cannot serve on {host}:{port} ({reason}); pick another --port: one no other program "
                             "uses, 1024 or above unless run as root") from err
        raise InputError(f"cannot serve on {host}:{port} ({reason}); give a --host of this machine: 127.0.0.1 "
                         "(this machine only) or 0.0.0.0 (every network interface)") from err


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging()
    try:
        check_address(args.host, args.port)
    except InputError as err:
        logger.error("%s", err)
        return 2
    if importlib.util.find_spec("gradio") is None:
        logger.error("%s", MISSING_GRADIO)
        return 2
    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(output_dir / ".gradio"))  # uploads and served copies stay here
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(output_dir / ".gradio" / "cached_examples"))  # else ./.gradio
    settings = AppSettings(model_path=args.model_path, output_dir=output_dir, dtype=args.dtype, quantize=args.quantize,
                           context_parallel=args.context_parallel, fsdp=args.fsdp,
                           max_device_memory=args.max_device_memory)
    engine = Engine(settings)
    try:
        enable_compilation_cache(args.compilation_cache)  # before anything compiles
        print(engine.warm_up().summary(), file=sys.stderr)
    except LongCatError as err:
        logger.error("%s", err)
        return 2
    engine.start()

    from longcat_jax.app.ui import build_app, serve  # gradio is imported here, after the check above

    app = build_app(engine, max_upload_mb=args.max_upload_mb)
    logger.info("Serving on http://%s:%d (results in %s)", args.host, args.port, output_dir)
    if args.host in ("127.0.0.1", "localhost"):
        logger.info("Only this machine can reach it. From another machine: ssh -L %d:127.0.0.1:%d THIS_HOST, then "
                    "open http://127.0.0.1:%d there; or start with --host 0.0.0.0 to serve every network interface "
                    "(anyone who reaches the port can run jobs on this machine)", args.port, args.port, args.port)
    try:
        serve(app, host=args.host, port=args.port, output_dir=output_dir, max_upload_mb=args.max_upload_mb)
    except OSError as err:
        logger.error("cannot serve on %s:%d (%s); pick another --port", args.host, args.port, err)
        return 2
    finally:
        engine.stop(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
