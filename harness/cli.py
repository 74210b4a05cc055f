"""Command line: ``slatcheck run|validate|replay|shrink|compare|report|history|merge|images|
formats|models|hypervisors|guests``.

Also ``python -m harness``.  Exit status of ``run``: 0 every scenario came out
as it expects (a negative scenario that fails with its expected findings
counts as passed; a skip is 0); 1 a scenario failed (a finding, a guest panic,
a timeout, Ctrl-C); 2 bad scenario file or usage (nothing boots); 3
infrastructure error.  ``compare`` and ``report`` (:mod:`harness.report_cli`) read
recorded runs: 2 on a missing or damaged file; ``compare`` 1 when something regressed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from harness import nightly_cli
from harness.context import DETAIL, Services
from harness.deadline import Held
from harness.errors import ScenarioError, ScenarioErrors, SkipScenario, SlatcheckError
from harness.images.recipe import KernelSource
from harness.provenance import git_commit, slatcheck_version
from harness.report_cli import add_parsers, cmd_compare, cmd_report
from harness.result import ScenarioResult
from harness.scenario import Scenario

if TYPE_CHECKING:
    from harness.repeat import RepeatPlan

__all__ = ["main"]


def _version() -> str:
    commit = git_commit()
    return f"slatcheck {slatcheck_version()}" + (f" ({commit})" if commit else "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slatcheck", description="Differential verification of hypervisor nested "
        "paging: scenarios boot a guest, drive its hypervisor and compare the nested tables "
        "with a reference model.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run scenario files")
    run.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                     help="directory for per-scenario artifacts and summary.json "
                          "(default: ./artifacts)")
    run.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    run.add_argument("--cold", action="store_true",
                     default=bool(os.environ.get("SLATCHECK_COLD")),
                     help="always boot; never start from (or save) a warm machine state "
                          "(also SLATCHECK_COLD=1)")
    run.add_argument("--report", action="append", default=[], metavar="NAME=PATH",
                     help="also write reporter NAME's output to PATH (see `slatcheck "
                          "reporters`); may repeat")
    run.add_argument("--image", metavar="NAME",
                     help="run every scenario on image NAME instead of its guest.image "
                          "(e.g. linux-amd64-6.12); checked like the scenario's own")
    _kernel_args(run)
    _repeat_args(run)
    nightly_cli.add_run_options(run)
    noise = run.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true",
                       help="also print each check's VMs: root, tables read, leaves by "
                            "size, findings")
    noise.add_argument("-q", "--quiet", action="store_true",
                       help="print only the summary table")
    rep = sub.add_parser("replay", help="check a kept failure's saved core again, offline")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    shr = sub.add_parser("shrink", help="reduce a failing scenario while it still fails")
    shr.add_argument("file", type=Path, metavar="FILE")
    shr.add_argument("--tries", type=int, default=3,
                     help="runs of each candidate before it counts as passing (3)")
    shr.add_argument("--budget", type=int, default=60, help="candidates to run at most (60)")
    shr.add_argument("--out", type=Path,
                     help="where the smallest goes (default: beside FILE, NAME.min.yaml)")
    shr.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    add_parsers(sub)
    val = sub.add_parser("validate", help="validate scenario files without booting anything")
    val.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    img = sub.add_parser("images", help="list or build guest images")
    img_sub = img.add_subparsers(dest="images_cmd", required=True)
    img_sub.add_parser("list", help="list image recipes")
    build = img_sub.add_parser("build", help="build an image into the cache")
    build.add_argument("name")
    _kernel_args(build)
    imp = img_sub.add_parser("import", help="put a disk installed elsewhere into the cache "
                             "(disk images only: openbsd-amd64, freebsd-amd64, dragonfly-amd64)")
    imp.add_argument("name")
    imp.add_argument("--disk", type=Path, required=True,
                     help="the installed disk (any format qemu-img reads)")
    imp.add_argument("--kernel", type=Path, required=True,
                     help="the kernel that disk boots (OpenBSD: /bsd with KARL off, the "
                          "file /bsd.booted is at run time)")
    imp.add_argument("--root-password", default=None,
                     help="root's password on the disk (default: the recipe's)")
    imp.add_argument("--module", type=Path, action="append", default=[],
                     help="a kernel module whose types discovery needs, kept beside the "
                          "kernel (FreeBSD: /boot/kernel/vmm.ko)")
    for name, what in (("formats", "page-table formats"), ("models", "reference models"),
                       ("hypervisors", "observable hypervisors"), ("guests", "guest OSes"),
                       ("reporters", "report formats")):
        sub.add_parser(name, help=f"list {what}")
    nightly_cli.add_commands(sub)
    return p


def _kernel_args(p: argparse.ArgumentParser) -> None:
    """--kernel and --modules: the kernel under test given by path."""
    p.add_argument("--kernel", type=Path, metavar="PATH",
                   help="the kernel under test instead of the image's: a build (O=) tree, "
                        "a linux-image-*.deb, or a boot image with --modules "
                        "(docs/kernels.md); refused before boot if it lacks what is needed")
    p.add_argument("--modules", type=Path, metavar="DIR",
                   help="where `make modules_install INSTALL_MOD_PATH=DIR` put its modules "
                        "(default for a tree: a sibling `modules` directory, or the tree)")


def _kernel_source(args: argparse.Namespace) -> KernelSource | None:
    """The --kernel/--modules pair; --modules alone is a usage error."""
    if args.kernel is None:
        if args.modules is not None:
            raise ScenarioError("--modules goes with --kernel")
        return None
    return KernelSource(args.kernel.expanduser().absolute(),
                        None if args.modules is None else args.modules.expanduser().absolute())


def _with_kernel(sc: Scenario, kernel: KernelSource | None) -> Scenario:
    """*sc* with the kernel under test given on the command line, if any."""
    from dataclasses import replace
    return sc if kernel is None else replace(sc, guest=replace(sc.guest, kernel=kernel))


def _repeat_args(run: argparse.ArgumentParser) -> None:
    """The options of a repeated run (harness.repeat)."""
    g = run.add_argument_group("repetition inside one boot")
    g.add_argument("--repeat", type=int, metavar="N", help="run the steps after boot N times")
    g.add_argument("--until-fail", action="store_true",
                   help="until an iteration fails (bounded by --repeat / --duration if given)")
    g.add_argument("--duration", type=float, metavar="T", help="start iterations for T seconds")
    g.add_argument("--reboot-every", type=int, metavar="K", help="boot anew every K iterations")
    g.add_argument("--seed", type=int, metavar="S",
                   help="the (first iteration's) seed: replays that run exactly")
    g.add_argument("--keep-on-failure", action="store_true",
                   help="keep L1 stopped at the first failure for gdb, with an ELF core")
    g.add_argument("--keep-for", type=float, metavar="T",
                   help="keep it T seconds (default: until Ctrl-C)")


def _plan(args: argparse.Namespace) -> RepeatPlan:
    from harness.repeat import RepeatPlan
    for name in ("repeat", "reboot_every"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ScenarioError(f"--{name.replace('_', '-')} wants a positive number, not {v}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise ScenarioError(f"--seed wants 0 <= S < 2**63, not {args.seed}")
    for name in ("duration", "keep_for"):
        v = getattr(args, name)
        if v is not None and not v > 0:      # also NaN: no iteration would ever start
            raise ScenarioError(f"--{name.replace('_', '-')} wants a positive number of "
                                f"seconds, not {v}")
    plan = RepeatPlan(count=args.repeat, until_fail=args.until_fail, duration=args.duration,
                      reboot_every=args.reboot_every, seed=args.seed,
                      keep_on_failure=args.keep_on_failure, keep_for=args.keep_for)
    if plan.keep_on_failure and not plan.repeats:
        plan = RepeatPlan(**{**vars(plan), "count": 1})
    return plan


class _Stop:
    """SIGINT and SIGTERM stop the run once: the first raises KeyboardInterrupt (the run
    ends with verdict ``interrupted``, its clean-up and reports still happen); later ones
    are counted and change nothing, so the exit status stays 1."""

    def __init__(self) -> None:
        self.signals = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            raise KeyboardInterrupt(f"signal {signum} ({signal.Signals(signum).name})")


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Where the runner's progress lines go (-q: nowhere; detail lines only with -v)."""
    def emit(line: str) -> None:
        if args.verbose or not line.split("] ", 1)[-1].startswith(DETAIL):
            print(line, flush=True)
    return (lambda line: None) if args.quiet else emit


def _reports(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(reporter, path) pairs from --junit and --report; bad names, and reports that
    cannot be written here (a mail with no sender), are usage errors."""
    from harness.reporters import REPORTERS
    out = [("junit", args.junit)] if args.junit else []
    for item in args.report:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ScenarioError(f"--report wants NAME=PATH, not {item!r}")
        if name not in REPORTERS:
            raise ScenarioError(str(REPORTERS.lookup_error(name)))
        check = REPORTERS[name].check
        if check is not None:
            check()
        out.append((name, Path(path)))
    return out


def _cmd_run(args: argparse.Namespace, services: Services | None = None) -> int:
    from harness.repeat import run_repeated
    from harness.reporters import summary_table
    from harness.runner import run_scenario

    reports = _reports(args)
    plan = _plan(args)
    kernel = _kernel_source(args)
    scenarios: list[Scenario] = [_with_kernel(sc, kernel) for sc in
                                 _load_all(args.scenarios, args.image)]  # all valid first
    scenarios, shard = nightly_cli.select_shard(args, scenarios)
    results: list[ScenarioResult] = []
    progress = _progress(args)
    try:
        for sc in scenarios:
            progress(f"[{sc.name}] running {sc.path}")
            if plan.repeats:
                res = run_repeated(sc, args.artifacts, plan, progress=progress,
                                   services=services, warm=not args.cold)
            else:
                res = run_scenario(_drawn(sc, args.seed), args.artifacts, progress=progress,
                                   services=services, warm=not args.cold)
            results.append(res)
            if not args.quiet:
                print(res.summary(max_findings=10 if args.verbose else 5), flush=True)
            if res.stop:
                break
    finally:
        failed = _write_reports(results, [("json", args.artifacts / "summary.json"), *reports])
        if shard is not None:
            _write_shard_summary(results, args.artifacts / "summary.json", shard)
        failed += nightly_cli.record(args, results)
        if results:
            print(summary_table(results), flush=True)
    return max([r.status for r in results] + [3 if failed else 0])


def _write_shard_summary(results: list[ScenarioResult], path: Path,
                         shard: dict[str, object]) -> None:
    """summary.json with the shard's place (the positions of the scenarios run)."""
    from harness.reporters import write_summary
    positions = shard["positions"]
    assert isinstance(positions, list)
    write_summary(results, path, shard | {"positions": positions[:len(results)]})


def _drawn(sc: Scenario, seed: int | None) -> Scenario:
    """A single run draws from ``--seed`` if given (else the scenario's, else a new one)."""
    from dataclasses import replace
    return sc if seed is None else replace(sc, seed=seed)


def _cmd_replay(args: argparse.Namespace) -> int:
    from harness.replay import replay
    res = replay(args.run_dir, progress=lambda line: print(line, flush=True))
    print(res.summary(), flush=True)
    return res.status


def _cmd_shrink(args: argparse.Namespace, services: Services | None = None) -> int:
    from harness.shrink import shrink
    res = shrink(args.file, args.artifacts, tries=args.tries, budget=args.budget,
                 out=args.out, progress=lambda line: print(line, flush=True),
                 services=services)
    if not res.reproduced:
        print(f"{args.file}: did not fail in {args.tries} run(s): nothing to shrink "
              f"(runs in {res.run_dir})")
        return 1
    print(f"{args.file}: fails as {res.signature[0] if res.signature else ''} "
          f"{sorted(res.signature[1]) if res.signature else ''}; kept {len(res.kept)} of "
          f"{len(res.tried)} reduction(s):")
    for what in res.kept:
        print(f"  - {what}")
    print(f"smallest: {res.out}")
    return 0


def _write_reports(results: list[ScenarioResult],
                   reports: list[tuple[str, Path]]) -> list[str]:
    """Every report that can be written; the ones that cannot are named on stderr."""
    from harness.reporters import REPORTERS
    failed = []
    for name, path in reports:
        try:
            REPORTERS[name].write(results, path)
        except (OSError, ScenarioError) as e:
            failed.append(str(path))
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            print(f"slatcheck: cannot write the {name} report {path}: {why}",
                  file=sys.stderr)
    return failed


def _load_all(paths: list[Path], image: str | None = None) -> list[Scenario]:
    """Every file validated; every error of every file reported, then one ScenarioErrors."""
    from harness.scenario import load_scenario
    loaded: list[Scenario] = []
    errors: list[ScenarioError] = []
    for p in paths:
        try:
            loaded.append(load_scenario(p, image))
        except ScenarioErrors as e:
            errors.extend(e.errors)
        except ScenarioError as e:
            errors.append(e)
    if errors:
        raise ScenarioErrors(errors) if len(errors) > 1 else errors[0]
    return loaded


def _cmd_validate(args: argparse.Namespace) -> int:
    scenarios = _load_all(args.scenarios)
    for p in args.scenarios:
        print(f"{p}: ok")
    return 0 if scenarios else 2


def _cmd_images(args: argparse.Namespace) -> int:
    from harness.images import IMAGES, build_image, image_facts
    from harness.images.build import build_image as debian_build
    if args.images_cmd == "list":
        for name in IMAGES.names():
            f = image_facts(name)
            print(f"{name:24} {f.os} {f.arch} ({f.builder})")
        return 0
    if args.images_cmd == "import":
        return _cmd_import(args)
    if args.name not in IMAGES:            # a name the user typed: usage, not the harness
        raise ScenarioError(f"no image recipe {args.name!r}; the recipes: "
                            f"{', '.join(IMAGES.names())}")
    kernel = _kernel_source(args)
    if kernel is not None and image_facts(args.name).builder != "debian-initramfs":
        raise ScenarioError(f"--kernel: image {args.name} is not built from a Linux kernel")
    try:
        img = (build_image(args.name, progress=lambda s: print(s, flush=True))
               if kernel is None else
               debian_build(args.name, progress=lambda s: print(s, flush=True), kernel=kernel))
    except SkipScenario as e:              # cannot be built here: not a success
        print(f"slatcheck: image {args.name} cannot be built here: {e}", file=sys.stderr)
        return 3
    print(f"{img.name}: {img.dir}")
    print(f"  kernel {img.kernel_release}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    """``images import NAME --disk FILE --kernel FILE``: a disk image installed elsewhere."""
    from harness.images import IMPORT_CHECKS, image_facts
    from harness.images.disk_image import import_disk_image, load_disk_recipe
    facts = image_facts(args.name)
    if facts.builder not in IMPORT_CHECKS:
        raise ScenarioError(f"image {args.name} is built by {facts.builder}, which makes no "
                            f"disk to import (disk images: {', '.join(sorted(IMPORT_CHECKS))})")
    img = import_disk_image(load_disk_recipe(args.name), args.disk, args.kernel,
                            check_kernel=IMPORT_CHECKS[facts.builder],
                            password=args.root_password,
                            progress=lambda s: print(s, flush=True),
                            modules=tuple(args.module))
    print(f"{img.name}: {img.dir}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from harness import formats, models, reporters
    from harness.guests import GUEST_OSES
    from harness.hypervisors import HYPERVISORS
    if args.cmd == "models":
        for name, model in models.MODELS.items():
            users = [h for h, hv in HYPERVISORS.items() if name in hv.models]
            runs = f"runs with {', '.join(users)}" if users else \
                "offline only: no observable hypervisor uses it yet"
            print(f"{name:20} {model.description}\n{'':20} formats {', '.join(model.formats)}; "
                  f"{runs}")
    elif args.cmd == "hypervisors":
        for name, hv in HYPERVISORS.items():
            print(f"{name:20} {hv.guest_os} {hv.arch}, {hv.format}, models "
                  f"{', '.join(hv.models)}\n{'':20} {hv.description}")
    elif args.cmd == "guests":
        for name, g in GUEST_OSES.items():
            state = "observable" if g.observable else f"console only: {g.missing}"
            print(f"{name:12} boots from {g.boot}; {state}")
    else:
        reg = formats.FORMATS if args.cmd == "formats" else reporters.REPORTERS
        for name, rec in reg.items():
            print(f"{name:24} {rec.description}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": _cmd_validate, "images": _cmd_images, "history": nightly_cli.cmd_history,
    "merge": nightly_cli.cmd_merge, "compare": cmd_compare, "report": cmd_report}


def main(argv: list[str] | None = None, services: Services | None = None) -> int:
    """Entry point; returns the exit status.  *services*: the registries (tests give fakes)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    stop = _Stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        early = [n for h in previous.values() if isinstance(h, Held) for n in h.came]
        if early:                   # came while the harness was being imported
            stop(early[0], None)
        if args.cmd == "run":
            return _cmd_run(args, services)
        if args.cmd == "shrink":
            return _cmd_shrink(args, services)
        if args.cmd == "replay":
            return _cmd_replay(args)
        return COMMANDS.get(args.cmd, _cmd_list)(args)
    except ScenarioError as e:
        print(f"slatcheck: {e}", file=sys.stderr)
        return 2
    except SlatcheckError as e:
        print(f"slatcheck: {type(e).__name__}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("slatcheck: interrupted", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def entry() -> None:
    """The ``slatcheck`` program: :func:`main`, then exit with its status.

    Once main has returned, a late Ctrl-C or SIGTERM can no longer change the exit
    status (the run and its reports are done).
    """
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:                # `slatcheck images list | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    entry()
