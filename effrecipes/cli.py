"""`composer-run`: the thin command-line shim over `effrecipes.runner.run`.

Parses arguments, calls one library function, and turns user mistakes into a one-line message
with exit code 2 (never a traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from typing import Any, Optional, Sequence

import yaml

from effrecipes import catalog
from effrecipes.cli_common import (ENVIRONMENT, OneLineParser, dotted_flags_to_overrides, guard,
                                   int_at_least, package_version, run_entrypoint, stdout_to_stderr)
from effrecipes.errors import UserError
from effrecipes.recipe import Recipe, load_recipe, parse_flops
from effrecipes.registry import datasets, models
from effrecipes.stats import fmt_flops

LISTABLE = catalog.KINDS

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


def list_entries(kind: str, pattern: str = "*") -> list[dict[str, str]]:
    """Names and descriptions of a registry, filtered by a glob pattern, from the committed
    catalog (`effrecipes.catalog`: no torch import, so `--list` answers at once)."""
    return catalog.read(kind, pattern)


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
           f"train FLOPs / sample:        {fmt_flops(report['train_flops_per_sample'])}"
           "  (FlopCounterMode, fwd+bwd, 2/MAC, after surgery)",
           f"inference FLOPs / sample:    {fmt_flops(report['forward_flops_per_sample'])}",
           f"fvcore fwd MACs / sample:    {fmt_flops(report['fvcore_forward_macs_per_sample'])}",
           f"FLOPs per batch:             {fmt_flops(plan['step_flops'])}"
           f"  (the dearest step; global batch {plan['global_batch_size']})",
           f"FLOP cap:                    {fmt_flops(plan['flops_cap'])}",
           f"planned batches:             {plan['planned_batches']:,}"
           f"  ({plan['planned_epochs']:.2f} epochs of {plan['batches_per_epoch']} batches;"
           f" binding cap: {plan['binding_cap']})"]
    if plan["mean_step_flops"] != plan["step_flops"]:
        out.append(f"expected mean batch:         {fmt_flops(plan['mean_step_flops'])}"
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
            ("FLOPs used / cap", f"{fmt_flops(metrics['flops_used'])} / {fmt_flops(metrics['flops_cap'])}"),
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


def _budget_table(args: argparse.Namespace) -> int:
    # lazy, like every torch-importing module here: --list, --help and --version stay instant
    from effrecipes.budget_table import budget_table, format_budget_table

    try:
        cap = parse_flops(args.flops)
    except ValueError as e:
        raise UserError(str(e), field="--flops") from None
    names: list[str] = []
    for pat in filter(None, (p.strip() for p in args.models.split(","))):
        names += models.names(pat) if any(c in pat for c in "*?[") else [pat]
    rows = budget_table(args.dataset, names, cap, stock_stem=args.stock_stem)
    n = round(int(datasets.entry(args.dataset, field_path="--dataset").info.num_train) * 0.9)
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
        from effrecipes import runner  # lazy: imports torch and Composer (seconds)

        # importing Composer installs SIGINT/SIGTERM handlers that exit silently; restore Ctrl-C
        # so it raises KeyboardInterrupt (the runner installs its own handlers while training)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        recipe = load_recipe(args.recipe, args.overrides)
        from effrecipes import device as devices  # lazy: imports torch

        # an absent GPU (or a precision it lacks) fails here, in a dry run too, before any data
        devices.resolve(recipe.trainer)
        quiet_stdout = stdout_to_stderr() if args.json else contextlib.nullcontext()
        if args.dry_run:
            runner.set_threads(args.threads)
            with quiet_stdout:
                report = runner.dry_run_report(runner.prepare(recipe, data_may_be_missing=True))
            print(json.dumps(report, indent=2, default=str) if args.json else format_dry_run(report))
            return 0
        with quiet_stdout:
            result = runner.run(recipe, threads=args.threads, quiet=args.quiet, resume=args.resume)
        if args.json:
            print(json.dumps(result.metrics, indent=2, default=str))
        elif not args.quiet:
            print(format_summary(result.metrics, str(result.run_dir)))
        return 0

    return guard(go, args.recipe)


def entrypoint() -> None:
    run_entrypoint(main)


if __name__ == "__main__":
    entrypoint()
