"""The app serves files from its output folder only: an ASGI middleware in front of Gradio's file routes.

Gradio answers `/gradio_api/file=TARGET` (and `/gradio_api/file/TARGET`) with a file from its allowed folders, and
with an http(s) TARGET it fetches that URL for the caller. The app's own rule is narrower and does not depend on
how Gradio is configured: TARGET must be a file inside the output folder (results, their provenance, uploads and
Gradio's working copies, which `__main__` keeps there), after symbolic links are followed. Anything else, a URL
included (the app makes no network call), is answered 403 before Gradio sees the request.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

FILE_ROUTE = re.compile(r"^(?:.*/)?gradio_api/file(?:=|/)(?P<target>.*)$", re.DOTALL)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, data:, file:, ...
REFUSAL = "The app serves files from its output folder only."


class OutputFolderOnly:
    """Refuses (403) every file request whose target is not a file inside `output_dir` (see the module docstring)."""

    def __init__(self, app: ASGIApp, output_dir: Path):
        self.app = app
        self.root = Path(output_dir).resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = FILE_ROUTE.match(scope["path"])  # the path as ASGI gives it: percent-escapes decoded
            if match is not None and not self.serves(match["target"]):
                await PlainTextResponse(REFUSAL, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def serves(self, target: str) -> bool:
        """Whether `target` (a path, absolute or relative to the working folder) is a file in the output folder."""
        if not target or SCHEME.match(target):
            return False
        try:
            path = Path(target).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            return False
        return path.is_relative_to(self.root) and path.is_file()
