"""Command line: ``slatcheck run|images|formats|models|validate`` (also ``python -m harness``).

Exit status: 0 all passed; 1 a scenario failed (finding, panic, timeout,
interrupt); 2 bad scenario file or usage; 3 infrastructure error.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from harness.errors import ScenarioError, SlatcheckError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slatcheck", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run scenario files")
    run.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                     help="directory for per-scenario artifacts (default: ./artifacts)")
    run.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    val = sub.add_parser("validate", help="validate scenario files without booting anything")
    val.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    img = sub.add_parser("images", help="list or build guest images")
    img_sub = img.add_subparsers(dest="images_cmd", required=True)
    img_sub.add_parser("list", help="list image recipes")
    build = img_sub.add_parser("build", help="build an image into the cache")
    build.add_argument("name")
    sub.add_parser("formats", help="list page-table formats")
    sub.add_parser("models", help="list hypervisor reference models")
    return p


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.junit import write_junit
    from harness.runner import run_scenario
    from harness.scenario import load_scenario

    scenarios = [load_scenario(p) for p in args.scenarios]   # all validated before any boot
    results = []
    try:
        for sc in scenarios:
            res = run_scenario(sc, args.artifacts)
            results.append(res)
            print(res.summary(), flush=True)
            if res.verdict == "interrupted":
                break
    finally:
        if args.junit:
            write_junit(results, args.junit)
    return max((r.exit_status for r in results), default=0)


def _cmd_validate(args: argparse.Namespace) -> int:
    from harness.scenario import load_scenario
    for p in args.scenarios:
        load_scenario(p)
        print(f"{p}: ok")
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    from harness.images import IMAGES, build_image
    if args.images_cmd == "list":
        for name in IMAGES.names():
            print(name)
        return 0
    img = build_image(args.name, progress=lambda s: print(s, flush=True))
    print(f"{img.name}: {img.dir}")
    print(f"  kernel {img.kernel_release}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    import harness.formats as formats
    import harness.models as models
    reg = formats.FORMATS if args.cmd == "formats" else models.MODELS
    for name, rec in reg.items():
        print(f"{name:24} {rec.description}")
    return 0


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "images": _cmd_images,
            "formats": _cmd_list, "models": _cmd_list}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return COMMANDS[args.cmd](args)
    except ScenarioError as e:
        print(f"slatcheck: {e}", file=sys.stderr)
        return 2
    except SlatcheckError as e:
        print(f"slatcheck: {type(e).__name__}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("slatcheck: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
