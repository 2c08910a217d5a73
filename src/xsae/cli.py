"""Command line: `xsae provenance PATH` prints how an output was made, back to the downloads."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from xsae import provenance
from xsae.errors import XsaeError


def _provenance(args: argparse.Namespace) -> int:
    node = provenance.chain(args.path)
    if node.record is None:
        print(f"{args.path}: no provenance record ({provenance.record_path(args.path)} is missing); "
              "it was not produced by the workflow, or it was produced before records existed",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(node), indent=2))
    else:
        print(provenance.format_chain(node))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from xsae import config

    config.load(args.path)
    print(f"{args.path}: valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xsae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prov = commands.add_parser("provenance", help="print the chain of records behind an output")
    prov.add_argument("path")
    prov.add_argument("--json", action="store_true", help="the whole tree of records as JSON")
    prov.set_defaults(func=_provenance)
    check = commands.add_parser("check-config", help="validate a config file against the schema")
    check.add_argument("path")
    check.set_defaults(func=_check_config)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except XsaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
