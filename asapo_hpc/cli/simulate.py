"""``asapo-hpc simulate lambda9m``: publish simulated Lambda 9M frames into a ring."""

from __future__ import annotations

import argparse
import sys

from asapo_hpc.errors import AsapoError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``simulate``."""
    p.add_argument("detector", choices=["lambda9m"], help="detector model")
    p.add_argument("--frames", type=int, default=100, help="frames to publish")
    p.add_argument("--rate", type=float, default=0.0,
                   help="frames/s to hold; 0 = as fast as the ring takes them")
    p.add_argument("--beamtime", default="default", help="beamtime id")
    p.add_argument("--source", default="detector", help="data source (ring) name")
    p.add_argument("--stream", default="default", help="stream name")
    p.add_argument("--layout", default="", help="Lambda layout TOML (default: shipped example)")
    p.add_argument("--poni", default="", help="PONI file (default: centred beam, 30 cm, 0.5 Å)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")


def run(args: argparse.Namespace) -> int:
    """Publish, print the rate held; 0 on success, 2 on an error."""
    from pathlib import Path

    from asapo_hpc.detectors.simulator import simulate
    from asapo_hpc.pipeline.workers import load_geometry, load_layout

    options = {"layout": args.layout, "poni": args.poni}
    try:
        layout = load_layout(options, Path.cwd())
        report = simulate(args.beamtime, args.source, args.frames, args.rate,
                          stream=args.stream, layout=layout,
                          geometry=load_geometry(options, layout, Path.cwd()), seed=args.seed)
    except AsapoError as exc:
        print(f"asapo-hpc simulate: {exc}", file=sys.stderr)
        return 2
    print(f"asapo-hpc simulate: {report.summary()}; stream {args.stream!r} finished")
    return 0
