"""The view's HTTP server: one page, the newest frame as PNG, the newest profile as JSON,
and a status JSON the page polls. Every read is a latest-value read."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from asapo_hpc.client import Message
from asapo_hpc.errors import AsapoError
from asapo_hpc.view.assemble import Arrangement, assemble_small, choose_layout, from_layout, stacked
from asapo_hpc.view.page import page_html
from asapo_hpc.view.profile import ProfileFormatError, decode_profile
from asapo_hpc.view.render import FrameFormatError, Scale, frame_layout, render_frame, render_small
from asapo_hpc.view.source import LatestSource, Snapshot

if TYPE_CHECKING:
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout


@dataclass(frozen=True)
class ViewConfig:
    """What to show and how; shape and dtype are used when a message's metadata lacks them."""

    beamtime: str
    raw: str
    processed: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    scale: Scale = Scale()
    poll_ms: int = 250  # how often the page asks for news
    min_read_interval_s: float = 0.05  # the ring is read at most this often per source
    # where the modules of a dataset frame go; None: the default Lambda 9M layout if the
    # parts name its modules, else the modules stacked
    layout: Lambda9MLayout | None = None


class _Cache:
    """One rendered result per source, keyed by the ring position of its message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Snapshot | None = None  # each read of a new message is a new Snapshot
        self._value: Any = None

    def get(self, snap: Snapshot, make: Callable[[Snapshot], Any]) -> Any:
        with self._lock:
            if snap is self._key:
                return self._value
        value = make(snap)  # outside the lock: a slow render does not block status reads
        with self._lock:
            self._key, self._value = snap, value
        return value


class ViewServer:
    """The server; ``start()`` runs it in a daemon thread, ``serve_forever()`` in this one."""

    def __init__(self, config: ViewConfig):
        self.config = config
        interval = config.min_read_interval_s
        self.raw = LatestSource(config.beamtime, config.raw, interval)
        self.processed = (LatestSource(config.beamtime, config.processed, interval)
                          if config.processed else None)
        self._frame_cache, self._profile_cache = _Cache(), _Cache()
        self.httpd = ThreadingHTTPServer((config.host, config.port), _handler_for(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/"

    def start(self) -> ViewServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="asapo-hpc-view",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
        self.httpd.server_close()
        self.raw.close()
        if self.processed is not None:
            self.processed.close()

    def __enter__(self) -> ViewServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- content ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out = {"beamtime": self.config.beamtime, "raw": self.raw.status(),
               "processed": self.processed.status() if self.processed else None,
               "poll_ms": self.config.poll_ms}
        snap = self.raw.refresh()
        if snap is not None:
            out["raw"].update(self._frame_cache.get(snap, self._render)["info"])
        return out

    def frame(self) -> dict[str, Any] | None:
        """{"png": bytes | None, "info": {...}} of the newest raw frame; None if none yet."""
        snap = self.raw.refresh()
        return None if snap is None else self._frame_cache.get(snap, self._render)

    def _render(self, snap: Snapshot) -> dict[str, Any]:
        if snap.parts:
            return self._render_dataset(snap)
        msg = snap.message
        try:
            meta = msg.meta if isinstance(msg.meta, dict) else {}
            (h, w), dtype = frame_layout(meta, msg.size, self.config.shape,
                                         self.config.dtype)
            png = render_frame(msg.array(dtype, (h, w)), self.config.scale)
        except (ValueError, TypeError, AsapoError) as exc:  # FrameFormatError is a ValueError
            return {"png": None, "id": msg.id, "info": {"frame_error": str(exc)}}
        return {"png": png, "id": msg.id,
                "info": {"shape": [h, w], "dtype": str(dtype), "frame_error": None}}

    def _render_dataset(self, snap: Snapshot) -> dict[str, Any]:
        """All parts of one frame, placed by the detector layout (or stacked)."""
        try:
            modules, arrangement = self._modules(snap.parts)
            small = assemble_small(modules, arrangement, self.config.scale.max_size)
            png = render_small(small, self.config.scale)
        except (ValueError, TypeError, AsapoError) as exc:  # FrameFormatError is a ValueError
            return {"png": None, "id": snap.message.id, "info": {"frame_error": str(exc)}}
        return {"png": png, "id": snap.message.id,
                "info": {"shape": list(arrangement.shape), "dtype": str(modules[0].dtype),
                         "module_shape": list(arrangement.module_shape),
                         "geometry": arrangement.geometry, "frame_error": None}}

    def _modules(self, parts: tuple[Message, ...]) -> tuple[list[np.ndarray], Arrangement]:
        """Each part as a 2D module array (no copy), and where the modules go."""
        metas = [p.meta if isinstance(p.meta, dict) else {} for p in parts]
        layout = choose_layout(self.config.layout, len(parts), metas)
        shape = layout.module_shape if layout else self.config.shape
        dtype = str(layout.dtype) if layout else self.config.dtype
        modules = []
        for part, meta in zip(parts, metas, strict=True):
            dims, dt = frame_layout(meta, part.size, shape, dtype)
            modules.append(part.array(dt, dims))
        kinds = {(m.shape, str(m.dtype)) for m in modules}
        if len(kinds) != 1:
            raise FrameFormatError(f"the parts differ in shape or dtype: {sorted(kinds)}")
        if layout is None:
            return modules, stacked(len(modules), modules[0].shape)
        if modules[0].shape != layout.module_shape:
            raise FrameFormatError(f"parts of {modules[0].shape} do not fit the modules of "
                                   f"layout {layout.name!r}, {layout.module_shape}")
        return modules, from_layout(layout)

    def profile(self) -> dict[str, Any] | None:
        snap = self.processed.refresh() if self.processed else None
        return None if snap is None else self._profile_cache.get(snap, _profile_of)


def _profile_of(snap: Snapshot) -> dict[str, Any]:
    msg = snap.message
    try:
        meta = msg.meta if isinstance(msg.meta, dict) else {}
        out = decode_profile(np.asarray(msg.data), meta)
        out["error"] = None
    except (ProfileFormatError, ValueError, TypeError, KeyError, AsapoError) as exc:
        out = {"error": f"message {msg.id} is not a profile: {exc}"}
    out["id"] = msg.id
    return out


def _handler_for(view: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.view = view
    return Handler


class _Handler(BaseHTTPRequestHandler):
    view: ViewServer
    server_version = "asapo-hpc-view/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the page polls often
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        route = {"/": self._page, "/index.html": self._page, "/status.json": self._status,
                 "/frame.png": self._frame, "/profile.json": self._profile}
        path = urlsplit(self.path).path
        handler = route.get(path)
        if handler is None:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", f"no such page: {path}\n".encode())
            return
        handler(parse_qs(urlsplit(self.path).query))

    def _send(self, code: HTTPStatus, ctype: str, body: bytes,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page moved on

    def _json(self, obj: Any, code: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(code, "application/json", json.dumps(obj).encode())

    def _page(self, query: dict) -> None:
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page_html(self.view).encode())

    def _status(self, query: dict) -> None:
        self._json(self.view.status())

    def _frame(self, query: dict) -> None:
        frame = self.view.frame()
        if frame is None or frame["png"] is None:
            why = "no frame published yet" if frame is None else frame["info"]["frame_error"]
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", f"{why}\n".encode())
            return
        self._send(HTTPStatus.OK, "image/png", frame["png"], {"X-Frame-Id": str(frame["id"])})

    def _profile(self, query: dict) -> None:
        if self.view.processed is None:
            self._json({"error": "no processed source: start the view with --processed"},
                       HTTPStatus.NOT_FOUND)
            return
        profile = self.view.profile()
        if profile is None:
            self._json({"error": "no profile published yet"}, HTTPStatus.SERVICE_UNAVAILABLE)
            return
        self._json(profile)
