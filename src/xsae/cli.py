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
    modified = provenance.modified_paths(node)
    if modified:
        print(f"{len(modified)} file(s) changed since they were recorded: {', '.join(modified)}; "
              "rebuild them (or what reads them) with Snakemake", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from xsae import verify

    findings = verify.verify(args.directory, show_progress=not args.quiet)
    for finding in findings:
        print(f"{finding.problem:10s} {finding.path}  ({finding.detail})")
    rerun = verify.rerun_arguments(findings)
    where = [] if args.directory == "." else ["--directory", args.directory]
    if not rerun:  # nothing, or unrecorded files only: no recorded output is damaged
        print(f"{args.directory}: every recorded output matches its provenance record")
        return 0
    if not args.rerun:
        print(f"{len(rerun) - 1} damaged output(s). To make them again and everything downstream of them:\n"
              f"  xsae run -- {' '.join([*where, *rerun])}\n"
              "(or add --rerun to this command)", file=sys.stderr)
        return 1
    from xsae.warm_start import run_snakemake

    return run_snakemake([*where, *rerun, *args.snakemake_args])


def _check_config(args: argparse.Namespace) -> int:
    from xsae import config

    files = config.config_files(args.paths)
    config.load_files(files)
    print(f"{' + '.join(map(str, files))}: valid")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from xsae import plan

    planned = plan.plan_files(args.paths, device=args.device, manifests=args.manifests)
    sys.stdout.write(plan.render(planned, args.format))
    return 0


def _rehearsal(args: argparse.Namespace) -> int:
    import logging

    from xsae.rehearsal.run import rehearse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = rehearse(args.config, args.root, cores=args.cores, port=args.port,
                      snakemake_args=args.snakemake_args, warm=not args.cold)
    print(f"rehearsal config: {result.config_path}\nresults: {result.workdir / 'results'}\n"
          f"snakemake exit status {result.returncode} after {result.seconds:.0f} s")
    return result.returncode


def _run(args: argparse.Namespace) -> int:
    import logging

    from xsae.config import read_file
    from xsae.warm_start import run_snakemake
    from xsae.workflow import configfile_args, recover_stale_lock, snakemake_workdir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    argv = args.snakemake_args
    for path in configfile_args(argv):  # Snakemake's own message names neither the file nor the line
        read_file(path)
    workdir = snakemake_workdir(argv)
    removed = recover_stale_lock(workdir)
    if removed:
        logging.info("removed a stale lock (%s) left by a Snakemake run that ended without "
                     "releasing it; no Snakemake process works in %s", ", ".join(p.name for p in removed),
                     workdir)
    return run_snakemake(argv, warm=not args.cold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xsae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prov = commands.add_parser("provenance", help="print the chain of records behind an output")
    prov.add_argument("path")
    prov.add_argument("--json", action="store_true", help="the whole tree of records as JSON")
    prov.set_defaults(func=_provenance)
    verifier = commands.add_parser(
        "verify", help="check every output of a run against its provenance record",
        description="Hash every output under results/ and resources/ and compare it with its record: "
                    "modified (corrupt or edited), missing (record left, output gone) and unrecorded "
                    "files. Exit status 1 when anything is wrong; --rerun makes the bad files again "
                    "and everything downstream of them (Snakemake --forcerun), with any Snakemake "
                    "arguments given after `--`: `xsae verify --rerun -- --cores 2`.")
    verifier.add_argument("directory", nargs="?", default=".", help="the run's folder (default: here)")
    verifier.add_argument("--rerun", action="store_true", help="run Snakemake to repair what is wrong")
    verifier.add_argument("--quiet", action="store_true", help="no progress bar")
    verifier.set_defaults(func=_verify)
    check = commands.add_parser(
        "check-config", help="validate what `snakemake --configfile CONFIG...` would run",
        description="Validate config files merged in order, as `snakemake --configfile` merges "
                    "them; with none, the embedded default config/config.yaml.")
    check.add_argument("paths", nargs="*", metavar="CONFIG")
    check.set_defaults(func=_check_config)
    planner = commands.add_parser(
        "plan", help="what a run will cost before it is submitted: steps, samples, hours, disk, memory",
        description="Every training job of the config files (merged in order; none: config/config.yaml) "
                    "with its optimizer steps and samples seen beside the paper's recipe, and hours, disk "
                    "and peak memory per stage; jobs short of the paper by more than 2x are flagged.")
    planner.add_argument("paths", nargs="*", metavar="CONFIG")
    planner.add_argument("--format", choices=("text", "md", "csv", "json"), default="text")
    planner.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                         help="price for GPUs (cluster.gpu_rules and the configs' GPU flags) or CPUs; "
                              "auto: from the config")
    planner.add_argument("--manifests", default="results/manifests",
                         help="count samples from manifests found here (default: %(default)s)")
    planner.set_defaults(func=_plan)
    rehearsal = commands.add_parser(
        "rehearsal", help="run the paper DAG at miniature scale, offline, on loopback data",
        description="Transform a paper config into its rehearsal (every run, table and figure kept; "
                    "datasets served from 127.0.0.1 as miniatures in their published formats; "
                    "encoders replaced by tiny random models of the same architecture; SAEs, seeds "
                    "and sweeps shrunk), write ROOT/config.yaml and run the DAG in ROOT/work. "
                    "Arguments after `--` go to snakemake (e.g. `-- -n`).")
    rehearsal.add_argument("config", nargs="?", default="config/paper.yaml")
    rehearsal.add_argument("--root", default="rehearsal", help="where everything goes (default: %(default)s)")
    rehearsal.add_argument("--cores", type=int, default=2)
    rehearsal.add_argument("--port", type=int, default=8765,
                           help="loopback port of the miniatures (their URL lists name it)")
    rehearsal.add_argument("--cold", action="store_true",
                           help="start every job in a fresh interpreter (see `xsae run --help`)")
    rehearsal.set_defaults(func=_rehearsal)
    runner = commands.add_parser(
        "run", help="run the workflow locally, each job started from a preloaded interpreter",
        description="`xsae run -- ARGS` is `snakemake ARGS`, except that local script jobs fork from "
                    "a server that already imported torch and the rules' libraries (seconds saved per "
                    "job; the results are the same). Cluster runs (--executor, --profile) and jobs "
                    "in conda environments start as usual.")
    runner.add_argument("--cold", action="store_true", help="plain `snakemake`: a fresh interpreter per job")
    runner.set_defaults(func=_run)
    argv = sys.argv[1:] if argv is None else list(argv)
    # `xsae rehearsal|run|verify ... -- <snakemake arguments>`
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.snakemake_args = passed
    try:
        return args.func(args)
    except XsaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
