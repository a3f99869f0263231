"""`composer-run`: the thin command-line shim over `effrecipes.runner.run`.

Parses arguments, calls one library function, and turns user mistakes into a one-line message
with exit code 2 (never a traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any, Callable, Optional, Sequence

import yaml

from effrecipes.errors import UserError

LISTABLE = ("algorithms", "models", "datasets")


def _fmt_flops(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def list_registry(kind: str, pattern: str = "*") -> str:
    from effrecipes import registry

    reg = registry.ALL[kind]
    lines = [f"{kind} ({len(reg.names(pattern))}):"]
    for e in reg.entries(pattern):
        lines.append(f"  {e.name:<24} {e.description}")
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
           f"  (global batch {plan['global_batch_size']})",
           f"FLOP cap:                    {_fmt_flops(plan['flops_cap'])}",
           f"planned batches:             {plan['planned_batches']:,}"
           f"  ({plan['planned_epochs']:.2f} epochs of {plan['batches_per_epoch']} batches;"
           f" binding cap: {plan['binding_cap']})"]
    if plan.get("reserved_flops"):
        out.append(f"reserved FLOPs:              {_fmt_flops(plan['reserved_flops'])}"
                   "  (SWA BatchNorm recompute)")
    out += ["", "# algorithms"]
    if not report["algorithms"]:
        out.append("(none)")
    for name, eff in report["algorithms"].items():
        out.append(f"{name}: acts on {eff['acts_on']}")
        for ch in eff["changes"]:
            out.append(f"    {ch}")
        if eff["noop_reason"]:
            out.append(f"    WARNING: changes nothing: {eff['noop_reason']}")
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
    p = argparse.ArgumentParser(prog="composer-run", description=(
        "Train an image classifier from a YAML recipe with MosaicML Composer, stopping at the "
        "recipe's FLOP budget."))
    p.add_argument("recipe", nargs="?", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. budget.flops=1e12 optimizer.lr=0.01")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe, FLOPs, plan and algorithm effects; do not train")
    p.add_argument("--list", choices=LISTABLE, metavar="{algorithms,models,datasets}",
                   help="list a registry")
    p.add_argument("--pattern", default="*", help="glob filter for --list (e.g. 'gap_*')")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (same recipe and overrides) with the FLOPs already spent")
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def go() -> int:
        if args.list:
            print(list_registry(args.list, args.pattern))
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
        if args.dry_run:
            runner.set_threads(args.threads)
            report = runner.dry_run_report(runner.prepare(recipe))
            print(json.dumps(report, indent=2, default=str) if args.json else format_dry_run(report))
            return 0
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
