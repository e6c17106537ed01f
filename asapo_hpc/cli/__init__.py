"""The `asapo-hpc` command. Nothing imports the cli; it imports the parts it runs."""

from __future__ import annotations

import argparse
import importlib
import sys


def _selfcheck(args: argparse.Namespace) -> int:
    from asapo_hpc.cli.selfcheck import run

    return run(args.messages, args.frames)


def _config_explain(args: argparse.Namespace) -> int:
    from asapo_hpc.config import explain

    print(explain())
    return 0


def _token(args: argparse.Namespace) -> int:
    from asapo_hpc.auth import issue_token, load_or_create_secret

    secret = load_or_create_secret(args.secret)
    print(issue_token(secret, beamtime=args.beamtime, beamline=args.beamline,
                      access_types=tuple(args.access), expires_in=args.expires_in))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asapo-hpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("selfcheck", help="move messages and frames through the ring, print rates")
    p.add_argument("--messages", type=int, default=100_000, help="1 KiB messages to move")
    p.add_argument("--frames", type=int, default=200, help="18 MiB frames to move")
    p.set_defaults(func=_selfcheck)
    p = sub.add_parser("config", help="ring settings")
    p.add_argument("action", choices=["explain"])
    p.set_defaults(func=_config_explain)
    p = sub.add_parser("token", help="issue a beamtime token (HS256 JWT, as ASAPO's)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--beamtime")
    who.add_argument("--beamline")
    p.add_argument("--access", nargs="+", default=["read"],
                   choices=["read", "write", "writeraw"])
    p.add_argument("--expires-in", type=float, default=None, help="seconds; default never")
    p.add_argument("--secret", default="asapo_hpc_secret.key",
                   help="secret key file (created 0600 if missing)")
    p.set_defaults(func=_token)
    p = sub.add_parser("serve", help="node service: record rings into catalog and HDF5")
    from asapo_hpc.cli.serve import add_arguments as _serve_arguments
    from asapo_hpc.cli.serve import run as _serve
    _serve_arguments(p)
    p.set_defaults(func=_serve)
    p = sub.add_parser("status", help="live view of a node: rates, ring fill, group lag")
    from asapo_hpc.cli.status import add_arguments as _status_arguments
    from asapo_hpc.cli.status import run as _status
    _status_arguments(p)
    p.set_defaults(func=_status)
    p = sub.add_parser("view", help="live web view of the newest raw frame and profile")
    from asapo_hpc.cli.view import add_arguments as _view_arguments
    from asapo_hpc.cli.view import run as _view
    _view_arguments(p)
    p.set_defaults(func=_view)
    for name, module, text in (
            ("simulate", "simulate", "publish simulated detector frames into a ring"),
            ("pipeline", "pipeline", "run a pipeline file (stages of workers between rings)"),
            ("demo", "demo", "simulator -> stitch -> azint with HDF5 recording, summary, PNG"),
            ("reprocess", "reprocess", "run a command or pipeline over a stored stream")):
        p = sub.add_parser(name, help=text)
        cli_module = importlib.import_module(f"asapo_hpc.cli.{module}")
        cli_module.add_arguments(p)
        p.set_defaults(func=cli_module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
