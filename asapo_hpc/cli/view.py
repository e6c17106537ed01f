"""``asapo-hpc view``: serve the live view until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from asapo_hpc.errors import AsapoError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``view``."""
    p.add_argument("--beamtime", required=True, help="beamtime id")
    p.add_argument("--raw", required=True, help="data source of raw frames")
    p.add_argument("--processed", help="data source of integrated profiles (1D)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8050, help="port; 0 picks a free one")
    p.add_argument("--shape", type=int, nargs="+", metavar="N",
                   help="frame shape when a message's metadata has none, e.g. --shape H W")
    p.add_argument("--dtype", help="frame dtype when a message's metadata has none")
    p.add_argument("--layout", metavar="TOML",
                   help="detector layout (Lambda 9M TOML) placing the modules of a dataset "
                        "frame; default: the shipped example layout if the parts name its "
                        "modules, else the modules stacked")
    p.add_argument("--scale", choices=["log", "linear"], default="log", help="colour scale")
    p.add_argument("--clip", type=float, nargs=2, default=(1.0, 99.5), metavar=("LO", "HI"),
                   help="percentiles mapped to the ends of the colour scale")
    p.add_argument("--cmap", default="viridis", help="matplotlib colour map name")
    p.add_argument("--max-size", type=int, default=1024,
                   help="longest side of the rendered frame in pixels (block-mean binning)")
    p.add_argument("--poll-ms", type=int, default=250, help="page refresh interval")


def config_from(args: argparse.Namespace):
    """The ViewConfig the flags describe."""
    from asapo_hpc.view import Scale, ViewConfig

    scale = Scale(kind=args.scale, low_pct=args.clip[0], high_pct=args.clip[1],
                  cmap=args.cmap, max_size=args.max_size)
    layout = None
    if args.layout:
        from asapo_hpc.detectors.lambda9m import Lambda9MLayout

        layout = Lambda9MLayout.from_toml(args.layout)
    return ViewConfig(beamtime=args.beamtime, raw=args.raw, processed=args.processed,
                      host=args.host, port=args.port,
                      shape=tuple(args.shape) if args.shape else None, dtype=args.dtype,
                      scale=scale, poll_ms=args.poll_ms, layout=layout)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 on a clean stop, 2 on bad input."""
    from asapo_hpc.view import ViewServer

    if args.shape is not None and len(args.shape) < 2:
        print("asapo-hpc view: --shape needs at least two numbers (H W)", file=sys.stderr)
        return 2
    try:
        server = ViewServer(config_from(args))
    except (AsapoError, OSError) as exc:
        print(f"asapo-hpc view: {exc}", file=sys.stderr)
        return 2
    print(f"asapo-hpc view: serving {server.url} (Ctrl-C to stop)", flush=True)
    _stop_on_sigterm(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _stop_on_sigterm(server) -> None:
    """SIGTERM stops serve_forever (shutdown must come from another thread)."""
    def handler(signum, frame) -> None:
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
