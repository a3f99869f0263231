"""`composer-run`: the thin command-line shim over `effrecipes.runner.run`.

Parses arguments, calls one library function, and turns user mistakes into a one-line message
with exit code 2 (never a traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

import yaml

from effrecipes.errors import UserError, shorten

REGISTRIES = ("algorithms", "models", "datasets")
SCHEMA_CHOICES = ("optimizers", "schedulers")   # Literal choices of the recipe schema (for now)
LISTABLE = REGISTRIES + SCHEMA_CHOICES

ENVIRONMENT = """\
environment:
  EFFRECIPES_THREADS  torch threads per run when --threads is not given (composer-ablate sets it
                      to cores // workers); tiny models train on 1 thread regardless
  WANDB_API_KEY       W&B key for loggers.wandb (mode auto: online with a key, offline without);
  WANDB_MODE          online | offline | disabled overrides the recipe's loggers.wandb.mode
  WANDB_SILENT        W&B's own console output; set to true by the CLIs unless already set"""

RUN_EPILOG = f"""\
examples:
  composer-run recipes/quickstart.yaml                       train until the FLOP cap
  composer-run R.yaml budget.flops=1e12 optimizer.lr=0.01    dotted overrides (values are YAML)
  composer-run R.yaml --optimizer.lr=0.01 --data.batch_size 64
                                                             the same as flags (W&B sweep agents)
  composer-run R.yaml --dry-run                              plan only: FLOPs, steps, algorithms
  composer-run R.yaml --json --out /tmp/runs                 metrics as JSON on stdout
  composer-run R.yaml --resume                               continue an interrupted run
  composer-run --list algorithms --pattern 'c*' --json       also: models, datasets, optimizers,
                                                             schedulers

exit codes: 0 done; 2 a mistake in the input (one line on stderr, nothing written); 130 interrupted

{ENVIRONMENT}"""


def package_version() -> str:
    """'effrecipes X (Composer Y)' from the installed package metadata (no heavy imports)."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    ours = version("effrecipes")
    if ours == "unknown":
        from effrecipes import __version__ as ours
    return f"effrecipes {ours} (Composer {version('mosaicml')})"


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its mistakes reported like every other one: one `error:` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {shorten(' '.join(message.split()), 300)} (see {self.prog} --help)",
              file=sys.stderr)
        raise SystemExit(2)


def int_at_least(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {shorten(text, 40)!r}") from None
        if v < low or (high is not None and v > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {v})")
        return v
    return parse


def finite_float(low: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number >= low (> low when not inclusive)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {shorten(text, 40)!r}") from None
        if not math.isfinite(v) or v < low or (not inclusive and v == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} "
                                             f"{low:g} (got {shorten(text, 40)})")
        return v
    return parse


def dotted_flags_to_overrides(argv: Sequence[str], parser: argparse.ArgumentParser,
                              top_keys: Sequence[str]) -> list[str]:
    """`--optimizer.lr=0.01` / `--optimizer.lr 0.01` (what W&B sweep agents pass) -> the override
    `optimizer.lr=0.01`. A flag is taken as an override when it is not one of the CLI's own options
    and its name is dotted or a top-level key (`--seed=3`). The overrides go last, after the
    positional arguments, in the order given."""
    own = set(parser._option_string_actions)
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            rest.extend(argv[i:])
            break
        name, eq, value = tok[2:].partition("=")
        if tok.startswith("--") and f"--{name}" not in own and name and (
                "." in name or name in top_keys):
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise UserError(f"--{shorten(name, 60)} needs a value: --{shorten(name, 60)}=VALUE "
                                    f"or --{shorten(name, 60)} VALUE")
                value = argv[i + 1]
                i += 1
            overrides.append(f"{name}={value}")
        else:
            rest.append(tok)
        i += 1
    return rest + overrides


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout - Python prints and anything a library or a child process
    writes to file descriptor 1 (W&B's sync hint, download progress) - to stderr, so that `--json`
    output is JSON only. stdout is restored afterwards for the JSON itself."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable fd 1: Python-level redirection only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _fmt_flops(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def list_entries(kind: str, pattern: str = "*") -> list[dict[str, str]]:
    """Names and descriptions of a registry, or the choices the recipe schema offers (optimizers,
    schedulers), filtered by a glob pattern."""
    if kind in SCHEMA_CHOICES:
        import fnmatch
        import typing

        from effrecipes.recipe import OptimizerConfig, SchedulerConfig

        field = {"optimizers": OptimizerConfig, "schedulers": SchedulerConfig}[kind].model_fields["name"]
        return [{"name": n, "description": "default" if n == field.default else ""}
                for n in sorted(typing.get_args(field.annotation)) if fnmatch.fnmatch(n, pattern)]
    from effrecipes import registry

    return [{"name": e.name, "description": e.description}
            for e in registry.ALL[kind].entries(pattern)]


def list_registry(kind: str, pattern: str = "*", as_json: bool = False) -> str:
    entries = list_entries(kind, pattern)
    if as_json:
        return json.dumps(entries, indent=2)
    lines = [f"{kind} ({len(entries)}):"]
    for e in entries:
        lines.append(f"  {e['name']:<24} {e['description']}".rstrip())
    return "\n".join(lines)


def format_dry_run(report: dict[str, Any]) -> str:
    plan = report["plan"]
    out = ["# resolved recipe", yaml.safe_dump(report["recipe"], sort_keys=False).rstrip(), "",
           "# model and budget",
           f"params:                      {report['params']:,}"
           f"  ({report['params_after_surgery']:,} after algorithm surgery)",
           f"train FLOPs / sample:        {_fmt_flops(report['train_flops_per_sample'])}"
           "  (FlopCounterMode, fwd+bwd, 2/MAC, after surgery)",
           f"inference FLOPs / sample:    {_fmt_flops(report['forward_flops_per_sample'])}",
           f"fvcore fwd MACs / sample:    {_fmt_flops(report['fvcore_forward_macs_per_sample'])}",
           f"FLOPs per batch:             {_fmt_flops(plan['step_flops'])}"
           f"  (the dearest step; global batch {plan['global_batch_size']})",
           f"FLOP cap:                    {_fmt_flops(plan['flops_cap'])}",
           f"planned batches:             {plan['planned_batches']:,}"
           f"  ({plan['planned_epochs']:.2f} epochs of {plan['batches_per_epoch']} batches;"
           f" binding cap: {plan['binding_cap']})"]
    if plan["mean_step_flops"] != plan["step_flops"]:
        out.append(f"expected mean batch:         {_fmt_flops(plan['mean_step_flops'])}"
                   "  (the step cost varies: the run stops when the next step could cross the cap)")
    out += ["", "# algorithms"]
    if not report["algorithms"]:
        out.append("(none)")
    for name, eff in report["algorithms"].items():
        out.append(f"{name}: acts on {eff['acts_on']}")
        for ch in eff["changes"]:
            out.append(f"    {ch}")
        if eff["noop_reason"]:
            out.append(f"    WARNING: changes nothing: {eff['noop_reason']}")
    notes = [w for w in report.get("warnings", []) if "changes nothing" not in w]
    if notes:
        out += ["", "# notes"] + [f"NOTE: {w}" for w in notes]
    return "\n".join(out)


def format_summary(metrics: dict[str, Any], run_dir: str) -> str:
    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.2f}%"

    rows = [("test accuracy", pct(metrics["test_accuracy"])),
            ("best val accuracy", pct(metrics["best_val_accuracy"])),
            ("FLOPs used / cap", f"{_fmt_flops(metrics['flops_used'])} / {_fmt_flops(metrics['flops_cap'])}"),
            ("stop reason", str(metrics["stop_reason"])),
            ("epochs (batches)", f"{metrics['epochs']:.2f} ({metrics['batches']})"),
            ("params", f"{metrics['params']:,}"),
            ("model size", f"{metrics['model_size_bytes'] / 1024:.1f} KiB"),
            ("CPU latency / image", "-" if metrics["cpu_latency_ms_per_image"] is None
             else f"{metrics['cpu_latency_ms_per_image']:.3f} ms"),
            ("train samples/s", "-" if not metrics["samples_per_second"]
             else f"{metrics['samples_per_second']:.0f}"),
            ("device", f"{metrics.get('device_name') or metrics.get('device') or '-'} "
             f"({metrics.get('precision') or '-'}"
             f"{', compiled' if metrics.get('compile') else ''})"),
            ("MFU", "-" if metrics.get("mfu") is None else f"{100 * metrics['mfu']:.1f}%"),
            ("wall seconds", f"{metrics['wall_seconds']:.1f}"),
            ("run directory", run_dir)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _guard(main: Callable[[], int], file: Optional[str] = None) -> int:
    """User mistakes -> one line on stderr naming the file, exit 2; Ctrl-C -> exit 130."""
    try:
        return main()
    except UserError as e:
        if file:
            e = e.in_file(file)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `composer-run --list models | head`: the reader left, not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _budget_table(args: argparse.Namespace) -> int:
    from effrecipes.budget_table import budget_table, format_budget_table
    from effrecipes.recipe import parse_flops
    from effrecipes.registry import datasets, models

    try:
        cap = parse_flops(args.flops)
    except ValueError as e:
        raise UserError(str(e), field="--flops") from None
    names: list[str] = []
    for pat in filter(None, (p.strip() for p in args.models.split(","))):
        names += models.names(pat) if any(c in pat for c in "*?[") else [pat]
    rows = budget_table(args.dataset, names, cap, stock_stem=args.stock_stem)
    n = round(int(datasets.entry(args.dataset, field_path="--dataset").meta["num_train"]) * 0.9)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(format_budget_table(args.dataset, rows, cap, n))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="composer-run", epilog=RUN_EPILOG,
                      formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Train an image classifier from a YAML recipe with MosaicML Composer, stopping at the\n"
        "recipe's FLOP budget."))
    p.add_argument("recipe", nargs="?", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. budget.flops=1e12 "
                   "optimizer.lr=0.01 (also as --budget.flops=1e12 or --budget.flops 1e12)")
    p.add_argument("--version", action="version", version=package_version())
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe, FLOPs, plan and algorithm effects; do not train")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="directory the run directory is written under (sets output.root)")
    p.add_argument("--list", choices=LISTABLE, metavar="{" + ",".join(LISTABLE) + "}",
                   help="list a registry (or the optimizers and schedulers a recipe may name)")
    p.add_argument("--pattern", default="*", help="glob filter for --list (e.g. 'gap_*')")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (same recipe and overrides) with the FLOPs already spent")
    p.add_argument("--json", action="store_true", help="machine-readable output: stdout holds "
                   "JSON only (anything else goes to stderr)")
    p.add_argument("--budget-table", action="store_true",
                   help="print params, training GFLOPs/epoch and epochs affordable for --models on "
                   "--dataset under --flops (paper 000 Tables I-II)")
    p.add_argument("--dataset", default="kuzushiji49", help="dataset for --budget-table")
    p.add_argument("--models", default="vgg5,efficientnet_b0,squeezenet,mobilenet_v2,"
                   "mobilenet_v3_small,mobilenet_v3_large,shufflenet_v2,mnasnet_small,mnasnet_medium",
                   help="comma-separated models (or glob patterns) for --budget-table")
    p.add_argument("--flops", default="1e14", help="FLOP cap for --budget-table (e.g. 100T)")
    p.add_argument("--stock-stem", action="store_true",
                   help="--budget-table: keep torchvision's stems on small images (paper 000's setting)")
    p.add_argument("--threads", type=int_at_least(1, 4096), default=None,
                   help="torch threads (default: $EFFRECIPES_THREADS, else the idle cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from effrecipes.recipe import Recipe

    parser = build_parser()
    try:
        argv = dotted_flags_to_overrides(sys.argv[1:] if argv is None else list(argv), parser,
                                         list(Recipe.model_fields))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.out is not None:  # last, so it wins over a dotted output.root override
        args.overrides.append(f"output.root={json.dumps(args.out)}")

    def go() -> int:
        if args.list:
            print(list_registry(args.list, args.pattern, as_json=args.json))
            return 0
        if args.budget_table:
            return _budget_table(args)
        if not args.recipe:
            raise UserError("no recipe given; usage: composer-run RECIPE.yaml [key.path=value ...]")
        from effrecipes.recipe import load_recipe
        from effrecipes import runner

        # importing Composer installs SIGINT/SIGTERM handlers that exit silently; restore Ctrl-C
        # so it raises KeyboardInterrupt (the runner installs its own handlers while training)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        recipe = load_recipe(args.recipe, args.overrides)
        quiet_stdout = stdout_to_stderr() if args.json else contextlib.nullcontext()
        if args.dry_run:
            runner.set_threads(args.threads)
            with quiet_stdout:
                report = runner.dry_run_report(runner.prepare(recipe, data_may_be_missing=True))
            print(json.dumps(report, indent=2, default=str) if args.json else format_dry_run(report))
            return 0
        from effrecipes import device as devices

        devices.resolve(recipe.trainer)  # an absent GPU fails here, before any data is loaded
        with quiet_stdout:
            result = runner.run(recipe, threads=args.threads, quiet=args.quiet, resume=args.resume)
        if args.json:
            print(json.dumps(result.metrics, indent=2, default=str))
        elif not args.quiet:
            print(format_summary(result.metrics, str(result.run_dir)))
        return 0

    return _guard(go, args.recipe)


def entrypoint() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
