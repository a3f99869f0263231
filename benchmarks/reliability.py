"""Bad-input reliability benchmark for the three CLIs (`composer-run`, `composer-ablate`,
`composer-report`).

It generates several hundred distinct bad (or odd) inputs - (a) bad recipe values in every
section and every algorithm's arguments, (b) bad dotted overrides and flags, (c) odd files and
paths (FIFOs, devices, symlink loops, non-UTF-8, huge files, `base:` chains and cycles, odd output
roots), (d) bad `composer-ablate` specs and flags, (e) `composer-report` on bad, missing or
corrupt matrix and run directories - and checks the CLIs' contract for bad input: exit code 2,
exactly one `error:` line on stderr, no traceback, nothing written (no run directory, no temp
files, the working directory unchanged), no hang.

The CLIs' `main(argv)` functions are imported once (torch and Composer are warmed up in this
process); every case then runs in a forked child with its own temporary working directory and
TMPDIR, stdout/stderr redirected at the file-descriptor level, an address-space limit and a
timeout. `composer-run` and `composer-ablate` cases use `--dry-run` (ablate with
`--calibration-batches 0`) except a handful of real runs of a tiny `digits` recipe whose output
root is odd. Each case is classified as held / traceback / accepted / multi-line / wrote-files /
hang / other; the summary is printed as a markdown table and every case that did not hold is
written with its argv, input, exit code and stderr tail to
`benchmarks/results/reliability-<date>.json`.

    .venv/bin/python benchmarks/reliability.py                  # everything (~500 cases)
    .venv/bin/python benchmarks/reliability.py --only b --limit 20
    .venv/bin/python benchmarks/reliability.py --list           # the cases, without running them

Deterministic: the case list is built from a fixed seed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("EFFRECIPES_THREADS", "1")  # the machine is shared: one torch thread per case

SEED = 20261130
W = "@W@"            # placeholder for the case's absolute working directory (argv and file text)
SENT = "XBADVALUEX"  # placeholder replaced by raw YAML text in generated recipes / specs
TIMEOUT_S = 60.0
CATEGORIES = {"a": "bad recipe values", "b": "bad overrides / flags", "c": "odd files and paths",
              "d": "composer-ablate specs", "e": "composer-report dirs", "control": "good input"}
REPORT_SOURCE = REPO / "results" / "matrices" / "fashion_mnist_10k_tune"


# --------------------------------------------------------------------------- the cases

@dataclass
class Case:
    cat: str                      # a | b | c | d | e | control
    tool: str                     # run | ablate | report
    label: str                    # short, unique description
    argv: list[str]
    files: dict[str, Any] = field(default_factory=dict)   # relpath -> str | bytes, under the cwd
    setup: Optional[Callable[[Path], None]] = None        # FIFOs, symlinks, copies, chmod
    expect: str = "error"         # error | either (odd input: exit 0 may be fine) | ok (control)
    note: str = ""
    real: bool = False            # a real run (no --dry-run)
    input_name: Optional[str] = None   # which file holds "the input" shown for a failing case

    def key(self) -> str:
        digest = hashlib.sha256()
        for k in sorted(self.files):
            v = self.files[k]
            digest.update(k.encode() + b"\0" + (v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")))
        return json.dumps([self.tool, self.argv, self.label, digest.hexdigest()])

    def input_text(self) -> str:
        name = self.input_name or next(iter(self.files), None)
        if name is None or name not in self.files:
            return self.label
        v = self.files[name]
        text = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        return f"{name}: {text}"


def dump_yaml(data: Any) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=10**9,
                          allow_unicode=True)


def with_raw(base: dict[str, Any], path: Optional[str], raw: Optional[str]) -> str:
    """`base` as YAML with the value at dotted `path` replaced by the raw YAML text `raw`
    (kept verbatim, so YAML 1.1 oddities such as `yes`, `010`, `0x10`, `~` stay as written)."""
    d = copy.deepcopy(base)
    if path is not None:
        node = d
        parts = path.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = SENT
    text = dump_yaml(d)
    return text if raw is None else text.replace(SENT, raw)


def without(base: dict[str, Any], path: str) -> str:
    d = copy.deepcopy(base)
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[p]
    node.pop(parts[-1], None)
    return dump_yaml(d)


BASE_RECIPE: dict[str, Any] = {
    "name": "rel",
    "seed": 0,
    "data": {"name": "digits", "batch_size": 32, "eval_batch_size": 256, "val_fraction": 0.15},
    "model": {"name": "gap_1p5k_dw"},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4},
    "scheduler": {"name": "cosine", "warmup_fraction": 0.0},
    "algorithms": [{"blurpool": {}}],
    "budget": {"flops": 1.0e8},
    "trainer": {"device": "cpu", "precision": "auto", "compile": False},
    "eval": {"every_epochs": 1, "latency_images": 0},
    "loggers": {"progress_bar": False, "wandb": {"enabled": False}},
    "output": {"root": "runs", "save_checkpoint": False},
}
MATRIX_BASE = {**copy.deepcopy(BASE_RECIPE), "algorithms": []}
BASE_SPEC: dict[str, Any] = {
    "name": "relm",
    "base": "base.yaml",
    "output": "matrices",
    "algorithms": {"mode": "one_at_a_time", "pool": {"blurpool": {}}},
    "seeds": [0],
    "view": "equal_flops",
}
DRY = ["--dry-run"]
ADRY = ["--dry-run", "--calibration-batches", "0"]


def run_case_(cat: str, label: str, text: str, *extra: str, expect: str = "error",
              note: str = "", files: Optional[dict[str, Any]] = None,
              setup: Optional[Callable[[Path], None]] = None) -> Case:
    """A composer-run --dry-run of `r.yaml` holding `text`."""
    return Case(cat, "run", label, ["r.yaml", *DRY, *extra], {"r.yaml": text, **(files or {})},
                setup, expect, note, input_name="r.yaml")


def spec_case(label: str, text: str, *extra: str, expect: str = "error", note: str = "",
              base_text: Optional[str] = None, files: Optional[dict[str, Any]] = None,
              setup: Optional[Callable[[Path], None]] = None, cat: str = "d") -> Case:
    """A composer-ablate --dry-run --calibration-batches 0 of `spec.yaml` (base: base.yaml)."""
    return Case(cat, "ablate", label, ["spec.yaml", *ADRY, *extra],
                {"spec.yaml": text, "base.yaml": base_text or dump_yaml(MATRIX_BASE), **(files or {})},
                setup, expect, note, input_name="spec.yaml")


# ---- (a) bad recipe values, every section

def section_cases() -> list[Case]:
    B = BASE_RECIPE
    E = "either"
    table: list[tuple[str, str, str, str]] = [  # (path, raw YAML, expect, note)
        # top level
        ("name", "123", "error", ""), ("name", "''", "error", ""), ("name", "a/b", "error", ""),
        ("name", "'..'", "error", ""), ("name", "x" * 300, "error", ""), ("name", "yes", "error", ""),
        ("name", "~", "error", ""), ("name", "[a, b]", "error", ""), ("name", "{a: 1}", "error", ""),
        ("name", "ré", "error", ""), ("name", "'-rel'", "error", ""), ("name", "2024-01-01", "error", ""),
        ("seed", "-1", "error", ""), ("seed", "1.5", "error", ""), ("seed", "'3'", "error", ""),
        ("seed", "yes", "error", ""), ("seed", "4294967296", "error", ""), ("seed", ".inf", "error", ""),
        ("seed", "0x10", E, "YAML 1.1 hex int 16: a valid seed"),
        ("seed", "010", E, "YAML 1.1 octal int 8: a valid seed"),
        ("seed", "1_000", E, "YAML 1.1 int with underscore: 1000, a valid seed"),
        ("seed", "1:30", E, "YAML 1.1 sexagesimal int 90: a valid seed"),
        ("seed", "~", "error", ""), ("seed", "1e3", "error", ""),
        ("strict", "'yes'", "error", ""), ("strict", "1", "error", ""), ("strict", "[true]", "error", ""),
        ("notes", "123", "error", ""), ("notes", "{a: 1}", "error", ""),
        ("reference", "{paper: 4, table: 5, value: 1}", "error", ""),
        ("reference", "{paper: '004', table: '5', value: .nan}", "error", ""),
        ("reference", "{paper: '004', table: '5'}", "error", ""), ("reference", "[1, 2]", "error", ""),
        ("reference", "{paper: '004', table: '5', value: 1, page: 3}", "error", ""),
        ("modle", "{name: gap_5k}", "error", ""), ("Data", "{}", "error", ""),
        # data
        ("data", "[]", "error", ""), ("data", "~", "error", ""), ("data", "digits", "error", ""),
        ("data.name", "mnist2", "error", ""), ("data.name", "''", "error", ""), ("data.name", "7", "error", ""),
        ("data.name", "~", "error", ""), ("data.name", "Digits", "error", ""),
        ("data.name", "'../../etc/passwd'", "error", ""),
        ("data.batch_size", "0", "error", ""), ("data.batch_size", "-1", "error", ""),
        ("data.batch_size", "65537", "error", ""), ("data.batch_size", "1.5", "error", ""),
        ("data.batch_size", "'32'", "error", ""), ("data.batch_size", "yes", "error", ""),
        ("data.batch_size", ".nan", "error", ""), ("data.batch_size", "1e3", "error", ""),
        ("data.batch_size", "32 images", "error", ""), ("data.batch_size", "[32]", "error", ""),
        ("data.val_fraction", "1", "error", ""), ("data.val_fraction", "-0.1", "error", ""),
        ("data.val_fraction", ".nan", "error", ""), ("data.val_fraction", ".inf", "error", ""),
        ("data.val_fraction", "10%", "error", ""), ("data.val_fraction", "yes", "error", ""),
        ("data.val_fraction", "0.99999", "error", "leaves ~0 training images"),
        ("data.eval_batch_size", "0", "error", ""), ("data.eval_batch_size", "'1k'", "error", ""),
        ("data.augment", "hflip", "error", ""), ("data.augment", "[flip]", "error", ""),
        ("data.augment", "[~]", "error", ""), ("data.augment", "{}", "error", ""),
        ("data.augment", "[[hflip]]", "error", ""),
        ("data.crop_padding", "-1", "error", ""), ("data.crop_padding", "65", "error", ""),
        ("data.image_size", "7", "error", ""), ("data.image_size", "1025", "error", ""),
        ("data.image_size", "0", "error", ""), ("data.image_size", "'28px'", "error", ""),
        ("data.train_subset", "0", "error", ""), ("data.train_subset", "-5", "error", ""),
        ("data.train_subset", "1", "error", "one training image (and a validation split of it)"),
        ("data.test_subset", "0", "error", ""), ("data.test_subset", "1.0", "error", ""),
        ("data.num_workers", "-1", "error", ""), ("data.num_workers", "65", "error", ""),
        ("data.download", "'no'", "error", ""), ("data.download", "0", "error", ""),
        ("data.root", "5", "error", ""), ("data.root", "[a]", "error", ""),
        ("data.kwargs", "[1, 2]", "error", ""), ("data.kwargs", "x", "error", ""),
        ("data.kwargs", "{num_train: .nan}", "error", ""), ("data.kwargs", "{a: {b: [.inf]}}", "error", ""),
        ("data.kwargs", "{bogus: 1}", E, "digits may ignore or refuse unknown kwargs"),
        ("data.bogus", "1", "error", ""),
        # model
        ("model", "~", "error", ""), ("model", "[]", "error", ""), ("model", "gap_5k", "error", ""),
        ("model.name", "gap_1p5k", "error", ""), ("model.name", "''", "error", ""),
        ("model.name", "~", "error", ""), ("model.name", "5", "error", ""),
        ("model.name", "torch.nn.Linear", "error", ""), ("model.name", "'gap_*'", "error", ""),
        ("model.kwargs", "{width: .nan}", "error", ""), ("model.kwargs", "{foo: 1}", "error", ""),
        ("model.kwargs", "[1]", "error", ""), ("model.kwargs", "{num_classes: 3}", "error", ""),
        ("model.channels_last", "'yes'", "error", ""), ("model.channels_last", "2", "error", ""),
        ("model.pretrained", "true", "error", ""),
        # optimizer
        ("optimizer", "sgd", "error", ""), ("optimizer", "[]", "error", ""),
        ("optimizer.name", "sgdd", "error", ""), ("optimizer.name", "~", "error", ""),
        ("optimizer.name", "torch.optim.SGD", "error", ""),
        ("optimizer.lr", "0", "error", ""), ("optimizer.lr", "-1", "error", ""),
        ("optimizer.lr", ".nan", "error", ""), ("optimizer.lr", ".inf", "error", ""),
        ("optimizer.lr", "-.inf", "error", ""), ("optimizer.lr", "0.1/2", "error", ""),
        ("optimizer.lr", "'10%'", "error", ""), ("optimizer.lr", "yes", "error", ""),
        ("optimizer.lr", "~", "error", ""), ("optimizer.lr", "[0.1]", "error", ""),
        ("optimizer.lr", "'1e-1'", E, "a float field reads a quoted number (documented)"),
        ("optimizer.lr", "1e-1", E, "YAML 1.2 float 0.1 (documented)"),
        ("optimizer.lr", "0x10", E, "YAML 1.1 hex int 16: a (large) valid lr"),
        ("optimizer.lr", "1e400", "error", "overflows to inf"),
        ("optimizer.lr", "'1_0.5'", E, "the numeric-string regex allows underscores"),
        ("optimizer.lr", "' 0.1 '", E, "a quoted number with spaces"),
        ("optimizer.momentum", "1", "error", ""), ("optimizer.momentum", "1.5", "error", ""),
        ("optimizer.momentum", "-0.1", "error", ""),
        ("optimizer.nesterov", "'true'", "error", ""), ("optimizer.nesterov", "1", "error", ""),
        ("optimizer.weight_decay", "-1", "error", ""), ("optimizer.weight_decay", ".inf", "error", ""),
        ("optimizer.betas", "[0.9]", "error", ""), ("optimizer.betas", "[0.9, 1.0]", "error", ""),
        ("optimizer.betas", "[0.9, 0.999, 0.5]", "error", ""), ("optimizer.betas", "0.9", "error", ""),
        ("optimizer.betas", "'0.9,0.999'", "error", ""), ("optimizer.betas", "[.nan, 0.9]", "error", ""),
        ("optimizer.betas", "{a: 1}", "error", ""), ("optimizer.betas", "[-0.1, 0.9]", "error", ""),
        # scheduler
        ("scheduler", "cosine", "error", ""),
        ("scheduler.name", "cosin", "error", ""), ("scheduler.name", "~", "error", ""),
        ("scheduler.name", "1", "error", ""),
        ("scheduler.warmup_fraction", "1", "error", ""), ("scheduler.warmup_fraction", "-0.1", "error", ""),
        ("scheduler.warmup_fraction", ".nan", "error", ""),
        ("scheduler.pct_start", "0", "error", ""), ("scheduler.pct_start", "1", "error", ""),
        ("scheduler.div_factor", "0", "error", ""), ("scheduler.div_factor", "-1", "error", ""),
        ("scheduler.final_div_factor", ".inf", "error", ""),
        ("scheduler.gamma", "0", "error", ""), ("scheduler.gamma", "1.5", "error", ""),
        ("scheduler.step_epochs", "0", "error", ""), ("scheduler.step_epochs", "1.5", "error", ""),
        ("scheduler.step_epochs", "'2'", "error", ""),
        ("scheduler.alpha_f", "2", "error", ""), ("scheduler.alpha_f", "-1", "error", ""),
        ("scheduler.t_max", "10", "error", ""),
        # algorithms (the list itself)
        ("algorithms", "{blurpool: {}}", "error", ""), ("algorithms", "blurpool", "error", ""),
        ("algorithms", "5", "error", ""), ("algorithms", "[5]", "error", ""),
        ("algorithms", "[[]]", "error", ""), ("algorithms", "[{}]", "error", ""),
        ("algorithms", "[{blurpool: {}, cutout: {}}]", "error", ""),
        ("algorithms", "[blurpool, blurpool]", "error", ""), ("algorithms", "[{name: 5}]", "error", ""),
        ("algorithms", "[cutoutt]", "error", ""), ("algorithms", "[alibi]", "error", ""),
        ("algorithms", "[{blurpool: [1]}]", "error", ""), ("algorithms", "[{blurpool: x}]", "error", ""),
        ("algorithms", "[cutmix, mixup]", "error", ""),
        ("algorithms", "[{name: cutout, length: -3}]", "error", ""),
        ("algorithms", "[~]", "error", ""), ("algorithms", "[{~: {}}]", "error", ""),
        ("algorithms", "[{5: {}}]", "error", ""),
        ("algorithms", "[{squeeze_excite: {}}]", E, "no-op SE is a warning unless strict"),
        # budget
        ("budget", "{}", "error", ""), ("budget", "~", "error", ""), ("budget", "1e9", "error", ""),
        ("budget", "{flops: ~, max_epochs: ~, max_seconds: ~}", "error", ""),
        ("budget.flops", "0", "error", ""), ("budget.flops", "-1", "error", ""),
        ("budget.flops", ".nan", "error", ""), ("budget.flops", ".inf", "error", ""),
        ("budget.flops", "'100 TFLOPS'", "error", ""), ("budget.flops", "100t", "error", ""),
        ("budget.flops", "'1,000'", "error", ""), ("budget.flops", "yes", "error", ""),
        ("budget.flops", "[1e9]", "error", ""), ("budget.flops", "1e25", "error", ""),
        ("budget.flops", "'1e400'", "error", ""), ("budget.flops", "1e400", "error", ""),
        ("budget.flops", "1" + "0" * 400, "error", "a 401-digit integer"),
        ("budget.flops", "'-5G'", "error", ""), ("budget.flops", "10", "error", "below one batch"),
        ("budget.max_epochs", "0", "error", ""), ("budget.max_epochs", "-1", "error", ""),
        ("budget.max_epochs", "'5 epochs'", "error", ""), ("budget.max_epochs", "5ba", "error", ""),
        ("budget.max_epochs", ".inf", "error", ""), ("budget.max_epochs", "1e6", "error", ""),
        ("budget.max_epochs", "1e6ep", "error", ""), ("budget.max_epochs", "yes", "error", ""),
        ("budget.max_epochs", "1e400ep", "error", ""), ("budget.max_epochs", "0.0001ep", "error", ""),
        ("budget.max_seconds", "0", "error", ""), ("budget.max_seconds", "1h", "error", ""),
        ("budget.max_seconds", "3600s", "error", ""), ("budget.max_seconds", "1e8", "error", ""),
        ("budget.max_seconds", "1e400sec", "error", ""), ("budget.max_seconds", "1.5sec", "error", ""),
        ("budget.max_seconds", "'-5sec'", "error", ""), ("budget.max_steps", "10", "error", ""),
        # trainer
        ("trainer", "cpu", "error", ""), ("trainer.device", "tpu", "error", ""),
        ("trainer.device", "cuda", "error", ""), ("trainer.device", "GPU", "error", ""),
        ("trainer.device", "~", "error", ""),
        ("trainer.device", "gpu", E, "no GPU here; --dry-run may plan without resolving the device"),
        ("trainer.precision", "fp16", "error", ""), ("trainer.precision", "bf16", "error", ""),
        ("trainer.precision", "amp_bf16", E, "amp on the CPU; --dry-run may not resolve it"),
        ("trainer.compile", "'false'", "error", ""), ("trainer.compile", "1", "error", ""),
        ("trainer.num_gpus", "2", "error", ""),
        # eval
        ("eval.every_epochs", "0", "error", ""), ("eval.every_epochs", "-1", "error", ""),
        ("eval.every_epochs", "1ba", E, "the schema takes 'ba'/'dur' since a change made during this session"), ("eval.every_epochs", ".nan", "error", ""),
        ("eval.every_epochs", "1e6", "error", ""), ("eval.every_epochs", "0ep", "error", ""),
        ("eval.every_epochs", "1e400ep", "error", ""),
        ("eval.checkpoint", "best", "error", ""), ("eval.checkpoint", "''", "error", ""),
        ("eval.checkpoint", "~", "error", ""), ("eval.latency_images", "-1", "error", ""),
        ("eval.latency_images", "1.5", "error", ""), ("eval.latency_images", "'10'", "error", ""),
        ("eval.per_class", "'yes'", "error", ""), ("eval", "[]", "error", ""),
        # loggers
        ("loggers", "[]", "error", ""), ("loggers.progress_bar", "'no'", "error", ""),
        ("loggers.progress_bar", "0", "error", ""), ("loggers.wandb", "'yes'", "error", ""),
        ("loggers.wandb", "true", "error", ""), ("loggers.wandb.enabled", "'true'", "error", ""),
        ("loggers.wandb.mode", "online2", "error", ""), ("loggers.wandb.mode", "disabled", "error", ""),
        ("loggers.wandb.tags", "a", "error", ""), ("loggers.wandb.tags", "[1]", "error", ""),
        ("loggers.wandb.project", "5", "error", ""), ("loggers.wandb.entity", "[]", "error", ""),
        ("loggers.wandb.unknown", "1", "error", ""), ("loggers.wandb", "~", "error", ""),
        ("loggers.tensorboard", "{}", "error", ""),
        # output
        ("output", "runs", "error", ""), ("output.root", "''", "error", ""),
        ("output.root", "5", "error", ""), ("output.root", "~", "error", ""),
        ("output.root", "[a]", "error", ""), ("output.root", "x" * 4001, "error", ""),
        ("output.run_name", "../x", "error", ""), ("output.run_name", "a/b", "error", ""),
        ("output.run_name", ".hidden", "error", ""), ("output.run_name", "''", "error", ""),
        ("output.run_name", "x" * 200, "error", ""), ("output.run_name", "5", "error", ""),
        ("output.run_name", "'a\\tb'", "error", ""),
        ("output.save_checkpoint", "'no'", "error", ""), ("output.overwrite", "'yes'", "error", ""),
        ("output.format", "json", "error", ""),
    ]
    cases = []
    for path, raw, expect, note in table:
        cases.append(run_case_("a", f"{path}: {raw[:60]}", with_raw(B, path, raw), expect=expect, note=note))
    # a required field removed, and a Python tag in a value
    for path in ("name", "data", "model", "budget", "data.name", "model.name", "reference.value"):
        if path.startswith("reference"):
            text = with_raw(B, "reference", "{paper: '004', table: '5'}")
        else:
            text = without(B, path)
        cases.append(run_case_("a", f"missing {path}", text))
    cases.append(run_case_("a", "optimizer.lr: !!python/object/apply:os.system",
                           with_raw(B, "optimizer.lr", "!!python/object/apply:os.system ['touch pwned']")))
    cases.append(run_case_("a", "data.kwargs: !!python/name:os.system",
                           with_raw(B, "data.kwargs", "{f: !!python/name:os.system ''}")))
    return cases


def _typo(name: str) -> str:
    """A plausible misspelling: two letters swapped (or a letter doubled)."""
    if len(name) >= 4:
        i = len(name) // 2
        return name[:i - 1] + name[i] + name[i - 1] + name[i + 1:]
    return name + name[-1]


def _bounds(info: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in getattr(info, "metadata", []):
        for k in ("ge", "gt", "le", "lt"):
            v = getattr(m, k, None)
            if v is not None:
                out[k] = v
    return out


def _candidates(name: str, info: Any) -> list[str]:
    """Bad raw YAML values for one algorithm argument, from its annotation and bounds."""
    ann = info.annotation
    args = typing.get_args(ann) if typing.get_origin(ann) is typing.Union else (ann,)
    optional = type(None) in args
    core = [a for a in args if a is not type(None)] or [ann]
    b = _bounds(info)
    out: list[str] = []
    if not optional:
        out.append("~")
    kinds = set()
    for t in core:
        origin = typing.get_origin(t)
        if origin is typing.Literal:
            kinds.add("literal")
        elif origin is typing.Annotated or (t is str):
            kinds.add("time")
        elif t is bool:
            kinds.add("bool")
        elif t is int:
            kinds.add("int")
        elif t is float:
            kinds.add("float")
        elif origin is typing.Union:
            kinds.update({"time", "float"})
    if "bool" in kinds:
        out += ["'yes'", "'true'", "1", "[true]"]
    if "literal" in kinds and "bool" not in kinds:
        out += ["bogus", "ALL", "5", "[all]"]
    elif "literal" in kinds:
        out += ["'Auto'", "2"]
    if "time" in kinds:
        out += ["5", "'5'", "-1ep", "1.5ba", "2dur", "'5 epochs'", "1e400ba", "1e400ep", "'1e400dur'",
                "12sp", "3sec"]
    if "int" in kinds and "float" not in kinds:
        out += ["1.5", "'3'", "yes", ".nan", "1e3", "[3]", "{v: 3}", "'3 px'"]
    if "float" in kinds:
        out += [".inf", "-.inf", ".nan", "yes", "'0.5 px'", "'50%'", "[0.5]", "{a: 1}"]
    if "ge" in b:
        out.append(repr(b["ge"] - 1) if isinstance(b["ge"], int) else repr(b["ge"] - 0.5))
    if "gt" in b:
        out.append(repr(b["gt"]))
        out.append(repr(b["gt"] - 1))
    if "le" in b:
        out.append(repr(b["le"] + 1))
    if "lt" in b:
        out.append(repr(b["lt"]))
    return list(dict.fromkeys(out))


# arguments the algorithm needs besides the bad one (no default in Composer)
REQUIRED = {"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0},
            "stochastic_depth": {"target_layer_name": "ResNetBottleneck"}}
# bad values already tried by tests/ (issue #15): skipped here
IN_TESTS = {("label_smoothing", "smoothing", "2.0"), ("sam", "interval", "0"),
            ("swa", "update_interval", "'0ep'"), ("squeeze_excite", "min_channels", "'16'"),
            ("mixup", "alpha", ".nan"), ("cutmix", "alpha", ".nan")}


def _algo_text(name: str, kwargs_raw: dict[str, str]) -> str:
    kw = {**{k: json.dumps(v) for k, v in REQUIRED.get(name, {}).items()}, **kwargs_raw}
    inner = ", ".join(f"{k}: {v}" for k, v in kw.items())
    return with_raw(BASE_RECIPE, "algorithms", f"[{{{name}: {{{inner}}}}}]")


def algorithm_cases(rng: random.Random) -> list[Case]:
    from effrecipes.algorithm_args import ARGS

    cases = []
    for name, spec in sorted(ARGS.items()):
        fields = spec.model_fields
        # an unknown (misspelt) argument, or a made-up one for argument-less algorithms
        typo = _typo(next(iter(fields))) if fields else "enabled"
        cases.append(run_case_("a", f"algorithms.{name}.{typo} (unknown argument)",
                               _algo_text(name, {typo: "1"})))
        pool = [(f, raw) for f, info in fields.items() for raw in _candidates(f, info)
                if (name, f, raw) not in IN_TESTS and f not in REQUIRED.get(name, {})]
        picks: list[tuple[str, str]] = []
        by_field: dict[str, list[str]] = {}
        for f, raw in pool:
            by_field.setdefault(f, []).append(raw)
        # one bad value for every argument, plus two more drawn at random
        for f, raws in by_field.items():
            picks.append((f, rng.choice(raws)))
        rest = [p for p in pool if p not in picks]
        picks += rng.sample(rest, min(2, len(rest)))
        # the non-finite time strings (1e400 with a unit), for every time argument
        for f, raws in by_field.items():
            for raw in ("1e400ba", "1e400ep"):
                if raw in raws and (f, raw) not in picks:
                    picks.append((f, raw))
        for f, raw in picks:
            cases.append(run_case_("a", f"algorithms.{name}.{f}: {raw}", _algo_text(name, {f: raw})))
        if fields:
            cases.append(run_case_("a", f"algorithms.{name}: a list of kwargs",
                                   with_raw(BASE_RECIPE, "algorithms", f"[{{{name}: [{next(iter(fields))}]}}]")))
    return cases


# ---- (b) bad overrides and flags

def override_cases() -> list[Case]:
    r = dump_yaml(BASE_RECIPE)
    E = "either"
    deep_key = ".".join(["a"] * 25)
    items: list[tuple[list[str], str, str]] = [
        # unknown keys and malformed key=value
        (["optimizer.lrr=0.1"], "error", ""), (["foo=1"], "error", ""), (["data.foo.bar=1"], "error", ""),
        (["Optimizer.lr=0.1"], "error", ""), (["optimizer.lr"], "error", ""), (["=0.1"], "error", ""),
        ([".lr=0.1"], "error", ""), (["optimizer..lr=0.1"], "error", ""), (["optimizer.lr.=1"], "error", ""),
        (["optimizer lr=0.1"], "error", ""), (["1abc=2"], "error", ""), (["optimizer.lr==0.1"], "error", ""),
        (["optimizer.lr=["], "error", ""), (["optimizer.lr={"], "error", ""),
        (["optimizer.lr=!!python/object/apply:os.system ['touch pwned']"], "error", ""),
        (["optimizer.lr=&a [*a]"], "error", ""), (["optimizer=5"], "error", ""),
        (["optimizer.lr.x=1"], "error", ""), (["data.batch_size.x=1"], "error", ""),
        (["algorithms.blurpool=5"], "error", ""), (["algorithms.blurpool=[1]"], "error", ""),
        (["algorithms.blurpool.x.y=1"], "error", ""), (["algorithms=5"], "error", ""),
        (["algorithms.=1"], "error", ""), (["algorithms.nonexistent={}"], "error", ""),
        (["algorithms.cutout.length=-1"], "error", ""), (["algorithms.mixup={}", "algorithms.cutmix={}"], "error", ""),
        (["algorithms.blurpool.min_channels.x=1"], "error", ""),
        (["algorithms.5=1"], "error", ""),
        (["data=[]"], "error", ""), (["model=~"], "error", ""), (["budget={}"], "error", ""),
        (["eval=5"], "error", ""), (["trainer.device=tpu"], "error", ""), (["output=runs"], "error", ""),
        (["budget.flops=~"], E, "removes the FLOP cap; no other cap is set, so an error is expected"),
        (["budget=~"], "error", ""), (["name="], "error", ""), (["seed="], "error", ""),
        (["seed=-1"], "error", ""), (["name=a b"], "error", ""), (["name=ok", "name=../../x"], "error", ""),
        (["data.name=mnist", "data.name="], "error", ""),
        # YAML 1.1 oddities as values
        (["optimizer.lr=yes"], "error", ""), (["optimizer.lr=~"], "error", ""),
        (["optimizer.lr=.nan"], "error", ""), (["optimizer.lr=-.inf"], "error", ""),
        (["budget.flops=.inf"], "error", ""), (["data.batch_size=0x20"], E, "YAML 1.1 hex int 32"),
        (["seed=010"], E, "YAML 1.1 octal 8"), (["data.batch_size=1e1"], "error", ""),
        (["data.batch_size=1e400"], "error", ""), (["optimizer.lr=1e400"], "error", ""),
        (["optimizer.momentum=on"], "error", ""), (["strict=on"], E, "YAML 1.1 bool"),
        (["eval.every_epochs=1ba"], E, "the schema takes 'ba'/'dur' since a change made during this session"), (["budget.max_epochs=5 epochs"], "error", ""),
        (["budget.max_seconds=1e400sec"], "error", ""), (["budget.flops=1e400"], "error", ""),
        (["budget.flops=100 TFLOPS"], "error", ""), (["optimizer.betas=0.9,0.999"], "error", ""),
        (["data.augment=hflip"], "error", ""), (["data.kwargs={a: .nan}"], "error", ""),
        # deep nesting and huge values
        ([deep_key + "=1"], "error", ""), ([".".join(["optimizer"] * 20) + "=1"], "error", ""),
        (["notes=" + "[" * 60 + "]" * 60], "error", ""),
        (["notes=" + "{a: " * 60 + "1" + "}" * 60], "error", ""),
        (["data.kwargs=" + "{a: " * 45 + "1" + "}" * 45], E, "45 levels, under the 50 limit; the data builder may refuse it"),
        (["name=" + "a" * 200000], "error", ""), (["optimizer.lr=" + "9" * 5000], "error", ""),
        (["seed=" + "9" * 400], "error", ""), (["budget.flops=1" + "0" * 400], "error", ""),
        (["data.batch_size=" + "9" * 5000], "error", ""), (["notes=" + "x" * 300000], E, "free text"),
        (["optimizer.lr=" + "0." + "0" * 5000 + "1"], "error", "underflows to 0.0"),
        (["x" * 100000 + "=1"], "error", ""), (["a=1"] * 3000, "error", ""),
        (["data.kwargs={" + ", ".join(f"k{i}: {i}" for i in range(20000)) + "}"], E, "digits may ignore kwargs"),
        # --key=value / --key value forms
        (["--optimizer.lr=-1"], "error", ""), (["--optimizer.lr", "-1"], "error", ""),
        (["--optimizer.lr"], "error", ""), (["--optimizer.lr", "--json"], "error", ""),
        (["--seed=abc"], "error", ""), (["--name=../x"], "error", ""), (["--data.batch_size", "0"], "error", ""),
        (["--unknown.key=1"], "error", ""), (["--unknownflag"], "error", ""), (["--budget.flops="], "error", ""),
        (["--=5"], "error", ""), (["--.=5"], "error", ""), (["--a..b=1"], "error", ""),
        (["--dry-run=yes"], "error", ""), (["--threads", "0"], "error", ""), (["--threads", "4097"], "error", ""),
        (["--threads", "abc"], "error", ""), (["--threads", "1.5"], "error", ""),
        (["--threads", "99999999999999999999"], "error", ""), (["--out", ""], "error", ""),
        (["--list", "bogus"], "error", ""), (["--list"], "error", ""), (["--jso"], E, "argparse accepts unambiguous prefixes (--jso = --json)"),
        (["-x"], "error", ""), (["--", "--optimizer.lr=1"], "error", ""),
        (["--seed", "1", "2"], "error", "a second positional is taken as an override without '='"),
        (["--optimizer.lr=0.1", "--optimizer.lr=-0.1"], "error", ""),
        (["name=caf\udce9"], "error", "a non-UTF-8 byte in argv (surrogateescape)"),
        (["--out", "caf\udce9", "seed=-1"], "error", "a non-UTF-8 --out"),
        (["notes=\udcff\udcfe"], E, "free text with undecodable bytes"),
        (["optimizer.lr=0.1 # a comment"], "either", "a YAML comment after the value"),
    ]
    cases = []
    for extra, expect, note in items:
        shown = " ".join(extra)
        label = shown if len(shown) <= 80 else f"{shown[:60]}...({len(shown)} chars)"
        cases.append(Case("b", "run", f"override {label}", ["r.yaml", *DRY, *extra], {"r.yaml": r},
                          None, expect, note, input_name="r.yaml"))
    # --list / --budget-table flags (no recipe)
    for extra, expect, note in [
            (["--list", "models", "--pattern", "["], E, "a glob that matches nothing"),
            (["--budget-table", "--flops", "abc"], "error", ""),
            (["--budget-table", "--flops", "-1"], "error", ""),
            (["--budget-table", "--flops", "nan"], "error", ""),
            (["--budget-table", "--flops", "1e30"], "error", ""),
            (["--budget-table", "--dataset", "nope"], "error", ""),
            (["--budget-table", "--models", "nope"], "error", ""),
            (["--budget-table", "--models", ",", "--dataset", "digits"], E, "an empty model list"),
            (["--budget-table", "--models", "gap_1p5k_dw", "--dataset", ""], "error", ""),
            ([], "error", "no recipe"), (["--dry-run"], "error", "no recipe")]:
        cases.append(Case("b", "run", "flags " + " ".join(extra), extra, {}, None, expect, note))
    return cases


# ---- (c) odd files and paths

def _mkfifo(rel: str) -> Callable[[Path], None]:
    return lambda w: os.mkfifo(w / rel)


def _symlink(rel: str, target: str) -> Callable[[Path], None]:
    return lambda w: os.symlink(target.replace(W, str(w)), w / rel)


def _chain(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def go(w: Path) -> None:
        for f in fns:
            f(w)
    return go


def _mkdir(rel: str, mode: Optional[int] = None) -> Callable[[Path], None]:
    def go(w: Path) -> None:
        (w / rel).mkdir(parents=True)
        if mode is not None:
            os.chmod(w / rel, mode)
    return go


def _chmod(rel: str, mode: int) -> Callable[[Path], None]:
    return lambda w: os.chmod(w / rel, mode)


def _sparse(rel: str, size: int) -> Callable[[Path], None]:
    def go(w: Path) -> None:
        with open(w / rel, "wb") as f:
            f.truncate(size)
    return go


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def file_cases() -> list[Case]:
    r = dump_yaml(BASE_RECIPE)
    E = "either"
    root_note = "running as root: permission bits do not stop reads or writes"
    cases: list[Case] = []

    def rc(label: str, path: str, files: Optional[dict[str, Any]] = None, setup=None, expect="error",
           note: str = "", extra: tuple[str, ...] = ()) -> None:
        cases.append(Case("c", "run", label, [path, *DRY, *extra], files or {}, setup, expect, note,
                          input_name=path if files and path in files else None))

    # the recipe file itself
    rc("missing file", "missing.yaml")
    rc("empty path", "")
    rc("path ' '", " ")
    rc("path '-'", "-")
    rc("a directory", "d.yaml", setup=_mkdir("d.yaml"))
    rc("the cwd '.'", ".")
    rc("a FIFO", "f.yaml", setup=_mkfifo("f.yaml"))
    rc("/dev/zero", "/dev/zero")
    rc("/dev/null", "/dev/null")
    rc("/dev/stdin", "/dev/stdin")
    rc("/proc/self/status (a 0-size regular file)", "/proc/self/status")
    rc("/proc/self/mem", "/proc/self/mem")
    rc("/etc/passwd (not YAML)", "/etc/passwd")
    rc("symlink loop", "loop.yaml", setup=_chain(_symlink("loop.yaml", "loop2.yaml"), _symlink("loop2.yaml", "loop.yaml")))
    rc("self symlink", "self.yaml", setup=_symlink("self.yaml", "self.yaml"))
    rc("dangling symlink", "dang.yaml", setup=_symlink("dang.yaml", "nowhere.yaml"))
    rc("symlink to a directory", "sd.yaml", setup=_chain(_mkdir("dir"), _symlink("sd.yaml", "dir")))
    rc("symlink to a FIFO", "sf.yaml", setup=_chain(_mkfifo("fifo"), _symlink("sf.yaml", "fifo")))
    rc("symlink to /dev/zero", "z.yaml", setup=_symlink("z.yaml", "/dev/zero"))
    rc("trailing slash on a file", "r.yaml/", {"r.yaml": r})
    rc("a file under a file", "r.yaml/x.yaml", {"r.yaml": r})
    rc("path of 5000 chars", "a" * 5000 + ".yaml")
    rc("a 300-char component", "b" * 300 + ".yaml")
    rc("non-UTF-8 path (surrogateescape)", "r\udcff.yaml")
    rc("latin-1 content", "r.yaml", {"r.yaml": r.replace("name: rel", "name: caf\xe9").encode("latin-1")})
    rc("UTF-16 with BOM", "r.yaml", {"r.yaml": r.encode("utf-16")})
    rc("UTF-8 BOM", "r.yaml", {"r.yaml": b"\xef\xbb\xbf" + r.encode()}, expect=E, note="a BOM YAML allows")
    rc("PNG header", "r.yaml", {"r.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))})
    rc("ELF header", "r.yaml", {"r.yaml": b"\x7fELF\x02\x01\x01" + b"\x00" * 200})
    rc("gzip of a recipe", "r.yaml", {"r.yaml": __import__("gzip").compress(r.encode())})
    rc("empty file", "r.yaml", {"r.yaml": ""})
    rc("whitespace only", "r.yaml", {"r.yaml": " \n\t\n  \n"})
    rc("comment only", "r.yaml", {"r.yaml": "# nothing\n"})
    rc("'---' only", "r.yaml", {"r.yaml": "---\n...\n"})
    rc("two YAML documents", "r.yaml", {"r.yaml": r + "---\n" + r})
    rc("a JSON list", "r.yaml", {"r.yaml": "[1, 2, 3]"})
    rc("a scalar", "r.yaml", {"r.yaml": "hello"})
    rc("CRLF line endings + tab indent", "r.yaml", {"r.yaml": r.replace("\n  ", "\r\n\t")})
    rc("1,000,001 bytes", "r.yaml", {"r.yaml": r + "notes: '" + "a" * (1_000_001 - len(r) - 10) + "'\n"})
    rc("a 10 GB sparse file", "r.yaml", setup=_sparse("r.yaml", 10 * 2**30))
    rc("a 1,000,000-byte file of NULs", "r.yaml", {"r.yaml": b"\x00" * 1_000_000})
    rc("billion laughs in data.kwargs", "r.yaml",
       {"r.yaml": billion_laughs() + with_raw(BASE_RECIPE, "data.kwargs", "{x: *l8}")})
    rc("billion laughs in model.kwargs", "r.yaml",
       {"r.yaml": billion_laughs() + with_raw(BASE_RECIPE, "model.kwargs", "{x: *l8}")})
    rc("billion laughs in notes", "r.yaml", {"r.yaml": billion_laughs() + with_raw(BASE_RECIPE, "notes", "*l8")})
    rc("billion laughs in algorithm kwargs", "r.yaml",
       {"r.yaml": billion_laughs() + with_raw(BASE_RECIPE, "algorithms", "[{cutout: {length: *l8}}]")})
    rc("billion laughs at top level (unknown key)", "r.yaml", {"r.yaml": billion_laughs() + r})
    rc("!!float abc", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "optimizer.lr", "!!float abc")})
    rc("!!int abc", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "seed", "!!int abc")})
    rc("!!timestamp abc", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "notes", "!!timestamp abc")})
    rc("!!binary '!!!'", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "notes", "!!binary '!!!'")})
    rc("!!set value", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "data.augment", "!!set {hflip: ~}")})
    rc("!!omap value", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "data.kwargs", "!!omap [{a: 1}]")})
    rc("!!bool maybe", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "strict", "!!bool maybe")})
    rc("a local tag !foo", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "notes", "!foo bar")})
    rc("merge key of a scalar", "r.yaml", {"r.yaml": r + "extra: {<<: 5}\n"})
    rc("unhashable key", "r.yaml", {"r.yaml": r + "? [a, b]\n: 1\n"})
    rc("undefined alias", "r.yaml", {"r.yaml": with_raw(BASE_RECIPE, "notes", "*nope")})
    rc("tab-indented mapping", "r.yaml", {"r.yaml": "name: rel\ndata:\n\tname: digits\n"})
    rc("60-deep nesting", "r.yaml", {"r.yaml": r + "notes: " + "[" * 60 + "]" * 60 + "\n"})
    rc("100,000-deep flow nesting", "r.yaml", {"r.yaml": "notes: " + "[" * 100_000 + "]" * 100_000 + "\n"})
    rc("chmod 000 recipe", "r.yaml", {"r.yaml": r}, setup=_chmod("r.yaml", 0), expect=E, note=root_note)
    rc("recipe in a chmod 000 directory", "p/r.yaml", {"p/r.yaml": r}, setup=_chmod("p", 0), expect=E,
       note=root_note)
    # base: chains
    child = "name: child\nbase: {base}\n"
    for label, base_raw, files, setup, expect, note in [
            ("base: missing.yaml", "missing.yaml", {}, None, "error", ""),
            ("base: a directory named b.yaml", "b.yaml", {}, _mkdir("b.yaml"), "error", ""),
            ("base: a FIFO named b.yaml", "b.yaml", {}, _mkfifo("b.yaml"), "error", ""),
            ("base: /dev/zero", "/dev/zero", {}, None, "error", ""),
            ("base: symlink b.yaml -> /dev/zero", "b.yaml", {}, _symlink("b.yaml", "/dev/zero"), "error", ""),
            ("base: x.txt", "x.txt", {"x.txt": r}, None, "error", ""),
            ("base: b.YAML (upper case)", "b.YAML", {"b.YAML": r}, None, E, "upper-case extension"),
            ("base: '.yaml'", "'.yaml'", {}, None, "error", ""),
            ("base: ''", "''", {}, None, "error", ""), ("base: 5", "5", {}, None, "error", ""),
            ("base: [b.yaml]", "[b.yaml]", {"b.yaml": r}, None, "error", ""),
            ("base: ~ (null)", "~", {}, None, "error", "no base: the child alone lacks data/model/budget"),
            ("base: itself", "r.yaml", {}, None, "error", ""),
            ("base: ./r.yaml (itself, other spelling)", "./r.yaml", {}, None, "error", ""),
            ("base: a -> b -> a", "a.yaml", {"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, None, "error", ""),
            ("base: a -> b -> c -> a", "a.yaml", {"a.yaml": "base: b.yaml\n", "b.yaml": "base: c.yaml\n",
                                                  "c.yaml": "base: a.yaml\n"}, None, "error", ""),
            ("base: symlink to itself", "s.yaml", {}, _symlink("s.yaml", "r.yaml"), "error", ""),
            ("base: symlink loop", "s.yaml", {}, _chain(_symlink("s.yaml", "t.yaml"), _symlink("t.yaml", "s.yaml")), "error", ""),
            ("base: dangling symlink", "s.yaml", {}, _symlink("s.yaml", "none.yaml"), "error", ""),
            ("base: a YAML list", "b.yaml", {"b.yaml": "- 1\n- 2\n"}, None, "error", ""),
            ("base: a YAML scalar", "b.yaml", {"b.yaml": "hello\n"}, None, "error", ""),
            ("base: an empty file", "b.yaml", {"b.yaml": ""}, None, "error", ""),
            ("base: binary", "b.yaml", {"b.yaml": bytes(range(256)) * 4}, None, "error", ""),
            ("base: non-UTF-8", "b.yaml", {"b.yaml": "name: caf\xe9\n".encode("latin-1")}, None, "error", ""),
            ("base: over 1 MB", "b.yaml", {"b.yaml": "notes: '" + "s" * 1_100_000 + "'\n"}, None, "error", ""),
            ("base: with a python tag", "b.yaml", {"b.yaml": "name: !!python/object/apply:os.system ['touch pwned']\n"}, None, "error", ""),
            ("base: duplicate keys", "b.yaml", {"b.yaml": "name: a\nname: b\n"}, None, "error", ""),
            ("base: NUL byte in the name", '"b\\0.yaml"', {}, None, "error", ""),
            ("base: a 300-char name", "c" * 300 + ".yaml", {}, None, "error", ""),
            ("base: under a file", "r2.yaml/b.yaml", {"r2.yaml": r}, None, "error", ""),
            ("base: ~nosuchuser/b.yaml", "~nosuchuser/b.yaml", {}, None, "error", ""),
            ("base: /etc/passwd.yaml", "/etc/passwd.yaml", {}, None, "error", ""),
            ("base: a chmod 000 file", "b.yaml", {"b.yaml": r}, _chmod("b.yaml", 0), E, root_note),
            ("base: '  b.yaml  ' (padded)", "'  b.yaml  '", {"b.yaml": r}, None, E, "stripped, like the check"),
            ("base: its base has a bad value", "b.yaml", {"b.yaml": with_raw(BASE_RECIPE, "optimizer.lr", "-1")}, None, "error", ""),
            ("base: 600-deep chain", "b0.yaml", {**{f"b{i}.yaml": f"base: b{i + 1}.yaml\n" for i in range(600)},
                                                 "b600.yaml": r}, None, E, "a legal but absurd chain"),
    ]:
        text = (r.replace("name: rel\n", f"name: child\nbase: {base_raw}\n", 1) if "chain" in label or "upper" in label or "padded" in label or "chmod" in label
                else child.format(base=base_raw))
        rc(label, "r.yaml", {"r.yaml": text, **files}, setup, expect, note)
    # odd output roots: real runs (not --dry-run: a dry run writes nothing and does not check them)
    real = [("output.root: a regular file", "f", {"f": "x"}, None, "error", ""),
            ("output.root: under a regular file", "f/sub", {"f": "x"}, None, "error", ""),
            ("output.root: /dev/null", "/dev/null", {}, None, "error", ""),
            ("output.root: NUL byte", '"a\\0b"', {}, None, "error", ""),
            ("output.root: a 300-char component", "d" * 300, {}, None, "error", ""),
            ("output.root: dangling symlink", "dl", {}, _symlink("dl", "nowhere"), "error", ""),
            ("output.root: chmod 555 directory", "ro", {}, _mkdir("ro", 0o555), E, root_note)]
    for label, raw, files, setup, expect, note in real:
        text = with_raw(BASE_RECIPE, "output.root", raw)
        cases.append(Case("c", "run", label, ["r.yaml", "--quiet"], {"r.yaml": text, **files}, setup, expect,
                          note, real=True, input_name="r.yaml"))
    named = with_raw(BASE_RECIPE, "output.run_name", "taken")
    cases.append(Case("c", "run", "output.run_name: an existing directory", ["r.yaml", "--quiet"],
                      {"r.yaml": named, "runs/taken/keep.txt": "keep"}, None, "error", "", real=True,
                      input_name="r.yaml"))
    cases.append(Case("c", "run", "output.run_name: an existing symlink", ["r.yaml", "--quiet"],
                      {"r.yaml": named, "elsewhere/keep.txt": "keep"},
                      _chain(_mkdir("runs"), _symlink("runs/taken", W + "/elsewhere")), "error", "",
                      real=True, input_name="r.yaml"))
    # composer-ablate and composer-report paths
    for label, path, files, setup in [
            ("ablate: missing spec", "missing.yaml", {}, None),
            ("ablate: spec is a directory", "d", {}, _mkdir("d")),
            ("ablate: spec is a FIFO", "f.yaml", {}, _mkfifo("f.yaml")),
            ("ablate: spec /dev/zero", "/dev/zero", {}, None),
            ("ablate: spec symlink loop", "l.yaml", {}, _chain(_symlink("l.yaml", "m.yaml"), _symlink("m.yaml", "l.yaml"))),
            ("ablate: empty spec", "s.yaml", {"s.yaml": ""}, None),
            ("ablate: spec is a list", "s.yaml", {"s.yaml": "- a\n- b\n"}, None),
            ("ablate: non-UTF-8 spec", "s.yaml", {"s.yaml": b"name: \xff\xfe\n"}, None),
            ("ablate: 2 MB spec", "s.yaml", {"s.yaml": "notes: '" + "n" * 2_000_000 + "'\n"}, None),
            ("ablate: billion-laughs spec (grid)", "s.yaml", {"s.yaml": billion_laughs() + dump_yaml(
                {**BASE_SPEC, "grid": {"optimizer.lr": SENT}}).replace(SENT, "*l8"), "base.yaml": dump_yaml(MATRIX_BASE)}, None),
            ("ablate: spec with !!float abc", "s.yaml", {"s.yaml": dump_yaml(BASE_SPEC).replace("seeds:\n- 0", "seeds: [!!float abc]")}, None)]:
        cases.append(Case("c", "ablate", label, [path, *ADRY], files, setup, "error", "",
                          input_name=path if path in files else None))
    for label, path, setup in [
            ("report: DIR 'f/' where f is a file", "f/", lambda w: (w / "f").write_text("x")),
            ("report: a 5000-char DIR", "m" * 5000, None),
            ("report: DIR is /dev/zero", "/dev/zero", None),
            ("report: DIR is a chmod 000 dir", "p", _chain(_mkdir("p"), _chmod("p", 0)))]:
        cases.append(Case("c", "report", label, [path], {}, setup, "error", root_note if "000" in label else ""))
    return cases


# ---- (d) composer-ablate specs

def spec_cases() -> list[Case]:
    S = BASE_SPEC
    E = "either"
    table: list[tuple[str, str, str, str]] = [
        ("gird", "{optimizer.lr: [0.1]}", "error", ""), ("seed", "0", "error", ""),
        ("algorithm", "{}", "error", ""), ("algorithms.pools", "{}", "error", ""),
        ("algorithms.mode", "bogus", "error", ""), ("algorithms.mode", "~", "error", ""),
        ("algorithms.mode", "explicit", "error", "explicit without combos"),
        ("algorithms.mode", "[one_at_a_time]", "error", ""),
        ("algorithms.combos", "[[blurpool]]", "error", "combos outside mode explicit"),
        ("algorithms.pool", "{blurpol: {}}", "error", ""), ("algorithms.pool", "{blurpool: 5}", "error", ""),
        ("algorithms.pool", "{cutout: {length: -1}}", "error", ""),
        ("algorithms.pool", "{cutout: {lenght: 1}}", "error", ""), ("algorithms.pool", "[5]", "error", ""),
        ("algorithms.pool", "blurpool", "error", ""), ("algorithms.pool", "[blurpool, blurpool]", "error", ""),
        ("algorithms.pool", "{alibi: {}}", "error", ""), ("algorithms.pool", "{sam: {rho: .nan}}", "error", ""),
        ("algorithms.pool", "{ema: {half_life: 1e400ba}}", "error", ""),
        ("algorithms.pool", "{swa: {update_interval: 1e400ep}}", "error", ""),
        ("algorithms.pool", "{5: {}}", "error", ""), ("algorithms.pool", "{~: {}}", "error", ""),
        ("algorithms.pool", "{blurpool: [1]}", "error", ""),
        ("algorithms.pool", "{}", E, "mode one_at_a_time with an empty pool: refused (documented)"),
        ("algorithms.pseudo", "{x: []}", "error", ""), ("algorithms.pseudo", "{x: scheduler.name=cosine}", "error", ""),
        ("algorithms.pseudo", "{a/b: [scheduler.name=cosine]}", "error", ""),
        ("algorithms.pseudo", "{x: [seed=1]}", "error", ""), ("algorithms.pseudo", "{x: [bad]}", "error", ""),
        ("algorithms.pseudo", "{x: [output.root=/tmp]}", "error", ""),
        ("algorithms.pseudo", "{baseline: [scheduler.name=cosine]}", "error", ""),
        ("algorithms.pseudo", "{blurpool: [scheduler.name=cosine]}", "error", ""),
        ("algorithms.pseudo", "{x: [5]}", "error", ""), ("algorithms.pseudo", "[x]", "error", ""),
        ("algorithms.pseudo", "{x: [optimizer.lr=-1]}", "error", ""),
        ("algorithms.pseudo", "{x: [scheduler.name=nope]}", "error", ""),
        ("grid", "{optimizer.lr: []}", "error", ""), ("grid", "{optimizer.lr: [0.1, 0.1]}", "error", ""),
        ("grid", "{optimizer.lr: 0.1}", "error", ""), ("grid", "{seed: [1, 2]}", "error", ""),
        ("grid", "{output.root: [a, b]}", "error", ""), ("grid", "{bad key: [1]}", "error", ""),
        ("grid", "{1x: [1]}", "error", ""), ("grid", "{optimizer.lr: [-1]}", "error", ""),
        ("grid", "{optimizer.lr: [.nan]}", "error", ""), ("grid", "{optimizer.lr: [.inf, 0.1]}", "error", ""),
        ("grid", "{algorithms.blurpool.min_channels: [1, 2]}", "error", ""),
        ("grid", "{optimizer.lr: [" + ", ".join(str(i) for i in range(1, 23)) + "], "
                 "data.batch_size: [" + ", ".join(str(i) for i in range(1, 23)) + "], "
                 "seed_unused: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]}",
         "error", "over 10,000 cells"),
        ("grid", "{data.name: ['x y', 'x_y']}", "error", ""), ("grid", "{optimizer: [{lr: 0.1}, {lr: 0.2}]}", E,
                                                            "a whole section as a grid value"),
        ("grid", "{optimizer.lr: [[0.1]]}", "error", ""), ("grid", "{optimizer.lrr: [0.1, 0.2]}", "error", ""),
        ("grid", "{'': [1]}", "error", ""), ("grid", "{optimizer..lr: [1]}", "error", ""),
        ("grid", "[optimizer.lr]", "error", ""), ("grid", "{optimizer.lr: " + "[" * 60 + "]" * 60 + "}", "error", ""),
        ("grid", "{optimizer.momentum: [0.0, 0.9], optimizer.lr: [1e400]}", "error", ""),
        ("tune", "[optimizer.lr]", "error", ""), ("tune", "optimizer.lr", "error", ""), ("tune", "[5]", "error", ""),
        ("seeds", "[]", "error", ""), ("seeds", "[-1]", "error", ""), ("seeds", "[0, 0]", "error", ""),
        ("seeds", "[1.5]", "error", ""), ("seeds", "'0'", "error", ""), ("seeds", "[yes]", "error", ""),
        ("seeds", "0", "error", ""), ("seeds", "[1099511627776]", "error", ""), ("seeds", "[~]", "error", ""),
        ("seeds", "[" + "9" * 400 + "]", "error", ""),
        ("view", "equal", "error", ""), ("view", "5", "error", ""),
        ("view", "equal_epochs", "error", "the base sets no budget.max_epochs"),
        ("reference", "{source: x}", "error", ""), ("reference", "{source: x, values: {nope: 1}}", "error", ""),
        ("reference", "{source: x, values: {baseline: .nan}}", "error", ""),
        ("reference", "{source: 5, values: {}}", "error", ""), ("reference", "[1]", "error", ""),
        ("notes", "5", "error", ""),
        ("name", "''", "error", ""), ("name", "a/b", "error", ""), ("name", "5", "error", ""),
        ("name", "~", "error", ""), ("name", "'..'", "error", ""),
        ("name", "n" * 300, E, "no length limit on matrix names; a dry run writes nothing"),
        ("base", "missing.yaml", "error", ""), ("base", "5", "error", ""), ("base", "''", "error", ""),
        ("base", "spec.yaml", "error", "the spec as its own base"), ("base", "/dev/zero", "error", ""),
        ("base", "'b\\0.yaml'", "error", ""), ("base", '"b\\0.yaml"', "error", ""),
        ("base", "notyaml.txt", "error", ""), ("base", "[base.yaml]", "error", ""),
        ("output", "5", "error", ""), ("output", "''", E, "an empty output: the cwd"),
        ("output", '"o\\0x"', "error", ""), ("output", "[a]", "error", ""),
        ("overrides", "x", "error", ""), ("overrides", "[5]", "error", ""), ("overrides", "[seed=1]", "error", ""),
        ("overrides", "[output.root=x]", "error", ""), ("overrides", "[optimizer.lrr=1]", "error", ""),
        ("overrides", "[budget.flops=0]", "error", ""), ("overrides", "[x]", "error", ""),
        ("overrides", "['a..b=1']", "error", ""), ("overrides", "[budget.flops=~]", "error", ""),
        ("overrides", "[algorithms=5]", "error", ""), ("overrides", "[data.batch_size=100000]", "error", ""),
    ]
    cases = []
    for path, raw, expect, note in table:
        files = {"notyaml.txt": "hello"} if raw == "notyaml.txt" else None
        cases.append(spec_case(f"{path}: {raw[:70]}", with_raw(S, path, raw), expect=expect, note=note, files=files))
    # combos
    ex = {**S, "algorithms": {"mode": "explicit", "pool": {"blurpool": {}, "cutout": {"length": 2}}}}
    for raw in ("[[nope]]", "[[blurpool], [blurpool]]", "[[blurpool, blurpool]]", "[]", "[blurpool]", "[[5]]",
                "[[blurpool, cutout], [cutout, blurpool]]", "{a: b}"):
        cases.append(spec_case(f"algorithms.combos: {raw}", with_raw(ex, "algorithms.combos", raw)))
    # conflicts and a base that already has the pool algorithm
    conflict = {**S, "algorithms": {"mode": "all_subsets", "pool": {"mixup": {}, "cutmix": {}}}}
    cases.append(spec_case("pool: mixup + cutmix, all_subsets (conflicting cell)", dump_yaml(conflict)))
    cases.append(spec_case("pool algorithm already in the base recipe", dump_yaml(S),
                           base_text=dump_yaml(BASE_RECIPE)))
    cases.append(spec_case("base recipe with a bad value", dump_yaml(S),
                           base_text=with_raw(MATRIX_BASE, "optimizer.lr", "-1")))
    cases.append(spec_case("base recipe without budget.flops", dump_yaml(S),
                           base_text=with_raw(MATRIX_BASE, "budget", "{max_epochs: 1}")))
    cases.append(spec_case("base recipe is a list", dump_yaml(S), base_text="- a\n"))
    cases.append(spec_case("base recipe with a bad algorithms list", dump_yaml(S),
                           base_text=with_raw(MATRIX_BASE, "algorithms", "[[1]]")))
    # command-line flags and key=value edits
    flags = [["--workers", "0"], ["--workers", "1025"], ["--workers", "abc"], ["--cpus-per-cell", "0"],
             ["--cpus-per-cell", "-1"], ["--cpus-per-cell", "nan"], ["--cpus-per-cell", "inf"],
             ["--gpus-per-cell", "-1"], ["--gpus-per-cell", "1e400"], ["--calibration-batches", "-1"],
             ["--calibration-batches", "100001"], ["--executor", "k8s"], ["--bogus"], ["--out", ""],
             ["--out", "/dev/null/x"], ["--only"], ["--json=1"]]
    for extra in flags:
        exp, note = ("either", "an empty --out: the cwd") if extra == ["--out", ""] else ("error", "")
        if extra == ["--out", "/dev/null/x"]:
            exp, note = "either", "a dry run writes nothing, so an unusable --out may pass"
        cases.append(spec_case("flag " + " ".join(extra), dump_yaml(S), *extra, expect=exp, note=note))
    cases.append(spec_case("flag --only nomatch", dump_yaml(S), "--only", "nomatch*", expect="either",
                           note="selects no cell"))
    edits = [("seeds=[]", "error"), ("seeds=abc", "error"), ("grid.optimizer.lr=[]", "error"),
             ("grid.optimizer.lr=", "either"), ("grid.=1", "error"), ("algorithms.pool.cutout.length=-1", "error"),
             ("algorithms.mode=bogus", "error"), ("view=x", "error"), ("name=a/b", "error"),
             ("optimizer.lr=-1", "error"), ("tune=[optimizer.lr]", "error"), ("x", "error"),
             ("algorithms.pool=5", "error"), ("algorithms=5", "error"), ("grid=5", "error"),
             ("base=missing.yaml", "error"), ("output=5", "error"), ("algorithms.pool.blurpool.x.y=1", "error"),
             ("grid.optimizer.lr=[0.1, 0.1]", "error"), ("seeds=[" + "1," * 20000 + "1]", "error"),
             ("grid.optimizer.lr.x=[1]", "error"), ("--grid.optimizer.lr", "error"),
             ("--seeds=[-5]", "error"), ("reference.values.x=1", "error"), ("algorithms.pseudo.x=[]", "error")]
    for text, exp in edits:
        note = "drops a grid key that is not there" if text == "grid.optimizer.lr=" else ""
        cases.append(spec_case(f"edit {text[:70]}", dump_yaml(S), text, expect=exp, note=note))
    grid_spec = {**S, "grid": {"optimizer.lr": [0.1, 0.2]}}
    cases.append(spec_case("edit optimizer.lr=0.3 while the grid varies it", dump_yaml(grid_spec), "optimizer.lr=0.3"))
    cases.append(spec_case("--list-cells with an invalid cell", with_raw(S, "overrides", "[optimizer.lr=-1]"),
                           "--list-cells"))
    return cases


# ---- (e) composer-report

def _copy_matrix(w: Path, name: str = "m") -> Path:
    dst = w / name
    shutil.copytree(REPORT_SOURCE, dst, ignore=shutil.ignore_patterns("checkpoint.pt"), symlinks=True)
    return dst


def _cells(m: Path) -> list[Path]:
    return sorted(p for p in (m / "cells").iterdir() if p.is_dir())


def _run_dirs(m: Path) -> list[Path]:
    return [c / c.name for c in _cells(m)]


def mutate(fn: Callable[[Path], None], name: str = "m") -> Callable[[Path], None]:
    def go(w: Path) -> None:
        fn(_copy_matrix(w, name))
    return go


def _write(rel: str, data: Any) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        p = m / rel
        if p.is_symlink() or p.exists():
            p.unlink() if not p.is_dir() or p.is_symlink() else shutil.rmtree(p)
        p.write_bytes(data if isinstance(data, bytes) else str(data).encode())
    return go


def _each_run(fname: str, data: Any, first_only: bool = False) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        for rd in _run_dirs(m)[:1] if first_only else _run_dirs(m):
            p = rd / fname
            if p.exists() or p.is_symlink():
                p.unlink() if not p.is_dir() else shutil.rmtree(p)
            if callable(data):
                data(p)
            else:
                p.write_bytes(data if isinstance(data, bytes) else str(data).encode())
    return go


def _each_cell(fname: str, data: Any) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        for c in _cells(m):
            p = c / fname
            p.unlink(missing_ok=True)
            p.write_bytes(data if isinstance(data, bytes) else str(data).encode())
    return go


def _rm(rel_glob: str) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        for p in sorted(m.glob(rel_glob)):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return go


def _link(rel: str, target: str) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        p = m / rel
        if p.exists() or p.is_symlink():
            p.unlink()
        os.symlink(target, p)
    return go


def _fifo(rel: str) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        p = m / rel
        p.unlink(missing_ok=True)
        os.mkfifo(p)
    return go


def _both(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        for f in fns:
            f(m)
    return go


def _json_edit(rel: str, edit: Callable[[Any], Any], each_run: bool = False) -> Callable[[Path], None]:
    def go(m: Path) -> None:
        paths = [rd / rel for rd in _run_dirs(m)] if each_run else [m / rel]
        for p in paths:
            p.write_text(json.dumps(edit(json.loads(p.read_text())), allow_nan=True))
    return go


def report_cases() -> list[Case]:
    E = "either"
    deep = "[" * 100_000 + "]" * 100_000
    tolerant = "a tolerant reader may report from what is left"
    items: list[tuple[str, list[str], Optional[Callable[[Path], None]], str, str]] = [
        # DIR itself
        ("missing DIR", ["missing"], None, "error", ""),
        ("DIR is a file", ["f"], lambda w: (w / "f").write_text("x"), "error", ""),
        ("DIR is empty", ["e"], _mkdir("e"), "error", ""),
        ("DIR holds junk only", ["j"], lambda w: ((w / "j").mkdir(), (w / "j" / "a.txt").write_text("x")), "error", ""),
        ("DIR is a FIFO", ["f"], _mkfifo("f"), "error", ""),
        ("DIR is /dev/null", ["/dev/null"], None, "error", ""),
        ("DIR is a symlink loop", ["l"], _chain(_symlink("l", "l2"), _symlink("l2", "l")), "error", ""),
        ("DIR is a dangling symlink", ["l"], _symlink("l", "nowhere"), "error", ""),
        ("DIR is ''", [""], None, "error", "an empty path"),
        ("DIR with a metrics.json directory", ["r"], lambda w: (w / "r" / "metrics.json").mkdir(parents=True), "error", ""),
        ("DIR with an empty metrics.json", ["r"], lambda w: ((w / "r").mkdir(), (w / "r" / "metrics.json").write_text("")), "error", ""),
        ("DIR with metrics.json = []", ["r"], lambda w: ((w / "r").mkdir(), (w / "r" / "metrics.json").write_text("[]")), "error", ""),
        ("DIR with a deeply nested metrics.json", ["r"], lambda w: ((w / "r").mkdir(), (w / "r" / "metrics.json").write_text(deep)), "error", ""),
        ("DIR with metrics.json -> /dev/zero", ["r"], lambda w: ((w / "r").mkdir(), os.symlink("/dev/zero", w / "r" / "metrics.json")), "error", ""),
        ("DIR with metrics.json a FIFO", ["r"], lambda w: ((w / "r").mkdir(), os.mkfifo(w / "r" / "metrics.json")), "error", ""),
        ("DIR with a symlink loop inside", ["r"], lambda w: ((w / "r").mkdir(), os.symlink("x", w / "r" / "x")), "error", ""),
        ("DIR with a directory symlink cycle", ["r"], lambda w: ((w / "r" / "s").mkdir(parents=True), os.symlink("..", w / "r" / "s" / "up")), "error", ""),
        # matrix directories, corrupted
        ("matrix: every metrics.json removed", ["m"], mutate(_rm("cells/*/*/metrics.json")), "error", ""),
        ("matrix: cells/ removed, results.json removed", ["m"], mutate(_both(_rm("cells"), _rm("results.json"))), "error", ""),
        ("matrix: cells/ removed", ["m"], mutate(_rm("cells")), E, tolerant),
        ("matrix: cells/ is a file", ["m"], mutate(_both(_rm("cells"), _write("cells", "x"))), E, tolerant),
        ("matrix: results.json empty", ["m"], mutate(_write("results.json", "")), E, tolerant),
        ("matrix: results.json invalid JSON", ["m"], mutate(_write("results.json", "{not json")), E, tolerant),
        ("matrix: results.json a list", ["m"], mutate(_write("results.json", "[1, 2]")), E, tolerant),
        ("matrix: results.json deeply nested", ["m"], mutate(_write("results.json", deep)), E, tolerant),
        ("matrix: results.json -> /dev/zero", ["m"], mutate(_link("results.json", "/dev/zero")), E, tolerant),
        ("matrix: results.json a FIFO", ["m"], mutate(_fifo("results.json")), E, tolerant),
        ("matrix: results.json cells: 5", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "cells": 5})), E, tolerant),
        ("matrix: results.json aggregate: 'x'", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "aggregate": "x"})), E, tolerant),
        ("matrix: results.json cells with string numbers", ["m"], mutate(_json_edit(
            "results.json", lambda d: {**d, "cells": [{**c, "test_accuracy": "abc", "flops_used": "x"} for c in d["cells"]]})), E, tolerant),
        ("matrix: results.json aggregate with junk types", ["m"], mutate(_json_edit(
            "results.json", lambda d: {**d, "aggregate": [{**a, "n": "x", "test_accuracy_mean": [1], "within_noise": "no",
                                                           "techniques": 5} for a in d["aggregate"]]})), E, tolerant),
        ("matrix: results.json with NaN/Infinity", ["m"], mutate(_json_edit(
            "results.json", lambda d: {**d, "aggregate": [{**a, "test_accuracy_mean": float("nan"), "delta_mean": float("inf")}
                                                          for a in d["aggregate"]]})), E, tolerant),
        ("matrix: results.json tuned: 5", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "tuned": 5})), E, tolerant),
        ("matrix: results.json tuned: [junk]", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "tuned": [1, "x", {"a": []}]})), E, tolerant),
        ("matrix: results.json tune: 'x'", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "tune": "optimizer.lr"})), E, tolerant),
        ("matrix: results.json reference: [1]", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "reference": [1]})), E, tolerant),
        ("matrix: results.json counts: 'x'", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "counts": "x"})), E, tolerant),
        ("matrix: results.json matrix: {}", ["m"], mutate(_json_edit("results.json", lambda d: {**d, "matrix": {"a": 1}})), E, tolerant),
        ("matrix: results.json cells without cell_id", ["m"], mutate(_json_edit(
            "results.json", lambda d: {**d, "cells": [{k: v for k, v in c.items() if k != "cell_id"} for c in d["cells"]]})), E, tolerant),
        ("matrix: results.json cell_id '../../x'", ["m"], mutate(_json_edit(
            "results.json", lambda d: {**d, "cells": [{**c, "cell_id": "../../x"} for c in d["cells"]]})), E, tolerant),
        ("matrix: matrix.json invalid", ["m"], mutate(_write("matrix.json", "{")), E, tolerant),
        ("matrix: matrix.json grid: 'x'", ["m"], mutate(_json_edit("matrix.json", lambda d: {**d, "grid": "abc"})), E, tolerant),
        ("matrix: matrix.json grid: [{}]", ["m"], mutate(_json_edit("matrix.json", lambda d: {**d, "grid": [{}, 5]})), E, tolerant),
        ("matrix: matrix.json deeply nested", ["m"], mutate(_write("matrix.json", deep)), E, tolerant),
        ("matrix: spec.yaml with a python tag", ["m"], mutate(_write("spec.yaml", "name: !!python/object/apply:os.system ['touch pwned']\n")), E, tolerant),
        ("matrix: spec.yaml with !!float abc", ["m"], mutate(_write("spec.yaml", "name: x\nview: !!float abc\n")), E, tolerant),
        ("matrix: spec.yaml with !!timestamp abc", ["m"], mutate(_write("spec.yaml", "name: x\nnotes: !!timestamp abc\n")), E, tolerant),
        ("matrix: spec.yaml a list", ["m"], mutate(_write("spec.yaml", "- 1\n")), E, tolerant),
        ("matrix: spec.yaml non-UTF-8", ["m"], mutate(_write("spec.yaml", b"name: \xff\n")), E, tolerant),
        ("matrix: spec.yaml -> /dev/zero", ["m"], mutate(_link("spec.yaml", "/dev/zero")), E, tolerant),
        ("matrix: spec.yaml billion laughs", ["m"], mutate(_write("spec.yaml", billion_laughs() + "reference: {values: *l8}\n")), E, tolerant),
        ("matrix: spec.yaml reference.values junk", ["m"], mutate(_write("spec.yaml", "name: x\nreference: {source: 5, values: {baseline: abc}}\n")), E, tolerant),
        ("matrix: cell.json invalid everywhere", ["m"], mutate(_each_cell("cell.json", "{")), E, tolerant),
        ("matrix: cell.json deeply nested", ["m"], mutate(_each_cell("cell.json", deep)), E, tolerant),
        ("matrix: cell.json techniques: 5", ["m"], mutate(_each_cell("cell.json", json.dumps({"cell_id": "x", "techniques": 5, "grid": [1]}))), E, tolerant),
        ("matrix: one metrics.json invalid JSON", ["m"], mutate(_each_run("metrics.json", "{", first_only=True)), E, tolerant),
        ("matrix: every metrics.json invalid JSON", ["m"], mutate(_each_run("metrics.json", "{")), E, tolerant),
        ("matrix: metrics.json deeply nested", ["m"], mutate(_each_run("metrics.json", deep, first_only=True)), E, tolerant),
        ("matrix: metrics.json -> /dev/zero", ["m"], mutate(_each_run("metrics.json", lambda p: os.symlink("/dev/zero", p), first_only=True)), E, tolerant),
        ("matrix: metrics.json a FIFO", ["m"], mutate(_each_run("metrics.json", lambda p: os.mkfifo(p), first_only=True)), E, tolerant),
        ("matrix: metrics.json wrong types", ["m"], mutate(_json_edit("metrics.json", lambda d: {**d, "test_accuracy": "abc", "flops_used": [1]}, each_run=True)), E, tolerant),
        ("matrix: metrics.json NaN accuracy", ["m"], mutate(_json_edit("metrics.json", lambda d: {**d, "test_accuracy": float("nan"), "flops_used": float("inf")}, each_run=True)), E, tolerant),
        ("matrix: metrics.json negative FLOPs", ["m"], mutate(_json_edit("metrics.json", lambda d: {**d, "flops_used": -1e12, "params": -5}, each_run=True)), E, tolerant),
        ("matrix: metrics.json reference junk", ["m"], mutate(_json_edit("metrics.json", lambda d: {**d, "reference": {"value": "x", "paper": [1]}}, each_run=True)), E, tolerant),
        ("matrix: metrics.json seed: 'x'", ["m"], mutate(_json_edit("metrics.json", lambda d: {**d, "seed": "x", "run_name": 5}, each_run=True)), E, tolerant),
        ("matrix: history.csv binary", ["m"], mutate(_each_run("history.csv", bytes(range(256)) * 8)), E, tolerant),
        ("matrix: history.csv -> /dev/zero", ["m"], mutate(_each_run("history.csv", lambda p: os.symlink("/dev/zero", p), first_only=True)), E, tolerant),
        ("matrix: history.csv a FIFO", ["m"], mutate(_each_run("history.csv", lambda p: os.mkfifo(p), first_only=True)), E, tolerant),
        ("matrix: history.csv header only", ["m"], mutate(_each_run("history.csv", "epoch,batch,flops_used,val_accuracy\n")), E, tolerant),
        ("matrix: history.csv with 1e400 and nan", ["m"], mutate(_each_run("history.csv", "epoch,batch,samples,flops_used,train_loss,val_accuracy,lr,seconds\n1,1,1,1e400,nan,inf,-inf,1\n2,2,2,nan,1,1e400,1,2\n")), E, tolerant),
        ("matrix: history.csv ragged rows", ["m"], mutate(_each_run("history.csv", "epoch,flops_used\n1\n2,3,4,5\n,,\n")), E, tolerant),
        ("matrix: recipe.yaml with a python tag", ["m"], mutate(_each_run("recipe.yaml", "a: !!python/object/apply:os.system ['touch pwned']\n")), E, tolerant),
        ("matrix: recipe.yaml with !!int abc", ["m"], mutate(_each_run("recipe.yaml", "seed: !!int abc\n")), E, tolerant),
        ("matrix: recipe.yaml with !!timestamp abc", ["m"], mutate(_each_run("recipe.yaml", "notes: !!timestamp abc\n")), E, tolerant),
        ("matrix: recipe.yaml deeply nested", ["m"], mutate(_each_run("recipe.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n")), E, tolerant),
        ("matrix: recipe.yaml loggers: 5", ["m"], mutate(_each_run("recipe.yaml", "name: x\nloggers: 5\n")), E, tolerant),
        ("matrix: recipe.yaml -> /dev/zero", ["m"], mutate(_each_run("recipe.yaml", lambda p: os.symlink("/dev/zero", p), first_only=True)), E, tolerant),
        ("matrix: run dir replaced by a file", ["m"], mutate(lambda m: [(shutil.rmtree(rd), rd.write_text("x")) for rd in _run_dirs(m)[:1]]), E, tolerant),
        ("matrix: run dir a symlink loop", ["m"], mutate(lambda m: [(shutil.rmtree(rd), os.symlink(rd.name, rd)) for rd in _run_dirs(m)[:1]]), E, tolerant),
        # --out and flags
        ("--out is a file", ["m", "--out", "f"], _chain(mutate(lambda m: None), lambda w: (w / "f").write_text("x")), "error", ""),
        ("--out under a file", ["m", "--out", "f/sub"], _chain(mutate(lambda m: None), lambda w: (w / "f").write_text("x")), "error", ""),
        ("--out /dev/null", ["m", "--out", "/dev/null"], mutate(lambda m: None), "error", ""),
        ("--out /proc/nope", ["m", "--out", "/proc/effrecipes-nope"], mutate(lambda m: None), "error", ""),
        ("--out ''", ["m", "--out", ""], mutate(lambda m: None), E, "an empty --out may mean the default"),
        ("--out a 300-char name", ["m", "--out", "o" * 300], mutate(lambda m: None), "error", ""),
        ("--out a dangling symlink", ["m", "--out", "dl"], _chain(mutate(lambda m: None), _symlink("dl", "nowhere")), "error", ""),
        ("--out a FIFO", ["m", "--out", "ff"], _chain(mutate(lambda m: None), _mkfifo("ff")), "error", ""),
        ("--out report.html is a directory", ["m"], mutate(lambda m: (m / "report.html").mkdir()), "error", ""),
        ("--out report.md is a FIFO", ["m"], mutate(lambda m: os.mkfifo(m / "report.md")), "error", ""),
        ("--title of 100,000 chars", ["m", "--title", "t" * 100_000], mutate(lambda m: None), E, "a long title"),
        ("--title with HTML", ["m", "--title", "<script>alert(1)</script>"], mutate(lambda m: None), E, "escaped?"),
        ("--bogus flag", ["m", "--bogus"], mutate(lambda m: None), "error", ""),
        ("no DIR", [], None, "error", ""),
        ("two DIRs", ["m", "m"], mutate(lambda m: None), "error", ""),
        # a single run directory, corrupted
        ("run dir: metrics.json invalid", ["r"], lambda w: _single_run(w, {"metrics.json": "{"}), "error", ""),
        ("run dir: metrics.json missing fields", ["r"], lambda w: _single_run(w, {"metrics.json": "{}"}), "error", ""),
        ("run dir: metrics.json NaN everywhere", ["r"], lambda w: _single_run(w, {"metrics.json": "nan-all"}), E, tolerant),
        ("run dir: history.csv -> /dev/zero", ["r"], lambda w: _single_run(w, {"history.csv": "->/dev/zero"}), E, tolerant),
        ("run dir: history.csv huge numbers", ["r"], lambda w: _single_run(w, {"history.csv": "epoch,flops_used,val_accuracy\n" + "1e308,1e308,1e308\n" * 50}), E, tolerant),
        ("runs dir: one good, one junk", ["rs"], lambda w: _two_runs(w), E, "a directory of runs skips the unreadable one (with a note)"),
    ]
    cases = []
    for label, argv, setup, expect, note in items:
        cases.append(Case("e", "report", label, argv, {}, setup, expect, note))
    return cases


def _single_run(w: Path, changes: dict[str, str]) -> None:
    src = REPORT_SOURCE / "cells"
    first = sorted(p for p in src.iterdir() if p.is_dir())[0]
    dst = w / "r"
    shutil.copytree(first / first.name, dst, ignore=shutil.ignore_patterns("checkpoint.pt"))
    for name, content in changes.items():
        p = dst / name
        p.unlink(missing_ok=True)
        if content.startswith("->"):
            os.symlink(content[2:], p)
        elif content == "nan-all":
            d = json.loads((first / first.name / "metrics.json").read_text())
            p.write_text(json.dumps({k: (float("nan") if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                                     for k, v in d.items()}))
        else:
            p.write_text(content)


def _two_runs(w: Path) -> None:
    src = REPORT_SOURCE / "cells"
    first = sorted(p for p in src.iterdir() if p.is_dir())[0]
    shutil.copytree(first / first.name, w / "rs" / "good", ignore=shutil.ignore_patterns("checkpoint.pt"))
    (w / "rs" / "bad").mkdir()
    (w / "rs" / "bad" / "metrics.json").write_text("{\"test_accuracy\": ")


# ---- controls (good input behaves normally)

def control_cases() -> list[Case]:
    r = dump_yaml(BASE_RECIPE)
    return [
        Case("control", "run", "good recipe --dry-run", ["r.yaml", *DRY], {"r.yaml": r}, expect="ok"),
        Case("control", "run", "good recipe + good overrides --dry-run",
             ["r.yaml", *DRY, "optimizer.lr=1e-2", "--data.batch_size", "64"], {"r.yaml": r}, expect="ok"),
        Case("control", "run", "--list algorithms", ["--list", "algorithms"], expect="ok"),
        Case("control", "ablate", "good spec --dry-run", ["spec.yaml", *ADRY],
             {"spec.yaml": dump_yaml(BASE_SPEC), "base.yaml": dump_yaml(MATRIX_BASE)}, expect="ok"),
        Case("control", "report", "good matrix", ["m"], {}, mutate(lambda m: None), expect="ok"),
        Case("control", "run", "good recipe, a real run", ["r.yaml", "--quiet"], {"r.yaml": r}, expect="ok", real=True),
    ]


def build_cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = (control_cases() + section_cases() + algorithm_cases(rng) + override_cases() + file_cases()
             + spec_cases() + report_cases())
    seen: set[str] = set()
    for c in cases:
        k = c.key()
        if k in seen:
            raise SystemExit(f"duplicate case: {c.label}")
        seen.add(k)
    return cases


# --------------------------------------------------------------------------- running one case

MAINS: dict[str, Callable[[list[str]], int]] = {}


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """relpath -> (kind, size, mtime_ns) of everything under root (links not followed)."""
    out: dict[str, tuple[str, int, int]] = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            kind = ("dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode)
                    else "fifo" if stat.S_ISFIFO(st.st_mode) else "file")
            out[os.path.relpath(p, root)] = (kind, st.st_size if kind == "file" else 0, st.st_mtime_ns
                                             if kind != "dir" else 0)
    return out


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = [f"+{k}" for k in sorted(set(after) - set(before))]
    out += [f"~{k}" for k in sorted(set(after) & set(before)) if after[k] != before[k]]
    out += [f"-{k}" for k in sorted(set(before) - set(after))]
    return out


def _tmp_names() -> set[str]:
    try:
        return set(os.listdir("/tmp"))
    except OSError:
        return set()


SUSPECT_TMP = re.compile(r"effrecipes|composer|ablate|calib|\.tmp-\d+|wandb", re.I)
CACHE = Path.home() / ".cache" / "effrecipes"


def _child(case: Case, argv: list[str], work: Path, tmp: Path, out: Path, err: Path, as_limit: int) -> None:
    rc = 1
    try:
        os.setpgid(0, 0)
        fd0 = os.open(os.devnull, os.O_RDONLY)
        fd1 = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd2 = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd0, 0)
        os.dup2(fd1, 1)
        os.dup2(fd2, 2)
        for fd in (fd0, fd1, fd2):
            os.close(fd)
        if as_limit:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        os.environ["TMPDIR"] = str(tmp)
        tempfile.tempdir = None
        os.chdir(work)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            result = MAINS[case.tool](argv)
            rc = result if isinstance(result, int) else 1
        except SystemExit as e:
            if e.code is None:
                rc = 0
            elif isinstance(e.code, int):
                rc = e.code
            else:
                print(e.code, file=sys.stderr)
                rc = 1
        except BaseException:  # noqa: BLE001 - the point: an uncaught exception is a finding
            traceback.print_exc()
            rc = 1
    except BaseException:  # noqa: BLE001
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(rc & 0xFF)


def _restore_perms(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    with contextlib.suppress(OSError):
        os.chmod(root, 0o700)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _head(path: Path, n: int = 20000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace")
    except OSError:
        return ""


def _where(tb_text: str, tail: str = "") -> str:
    """'ExcType: message @ file:line in func' of the last traceback in the text (the exception
    line is read from `tail`, the end of stderr, when given: a long traceback is cut in the head)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb_text)
    lines = [ln for ln in (tail or tb_text).strip().splitlines() if ln and not ln.startswith(" ")
             and not ln.startswith("[Previous line repeated")]
    exc = lines[-1] if lines else "?"
    own = [f for f in frames if "/effrecipes/" in f[0]] or frames
    loc = ""
    if own:
        f = own[-1]
        loc = f"{f[0].split('/effrecipes/')[-1] if '/effrecipes/' in f[0] else f[0]}:{f[1]} in {f[2]}"
        if frames and frames[-1] != f:
            g = frames[-1]
            loc += f" (raised in {g[0].split('site-packages/')[-1]}:{g[1]} in {g[2]})"
    return f"{exc[:200]} @ {loc}"


def run_case(case: Case, idx: int, root: Path, timeout: float, as_limit: int) -> dict[str, Any]:
    sb = root / f"{idx:04d}"
    work, tmp = sb / "work", sb / "tmp"
    work.mkdir(parents=True)
    tmp.mkdir()
    w = str(work)
    argv = [a.replace(W, w) for a in case.argv]
    for rel, content in case.files.items():
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_bytes(content.replace(W, w).encode("utf-8", "surrogateescape"))
    if case.setup:
        case.setup(work)
    before, cache_before, tmp_before = snapshot(work), snapshot(CACHE), _tmp_names()
    out, err = sb / "stdout", sb / "stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(case, argv, work, tmp, out, err, as_limit)
    hang = False
    delay = 0.005
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() - t0 > timeout:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            hang = True
            break
        time.sleep(delay)
        delay = min(0.05, delay * 1.5)
    seconds = time.monotonic() - t0
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # anything the case left running in its process group
    rc = os.waitstatus_to_exitcode(status)
    stdout, stderr = _head(out), _tail(err, 20000)
    full_err = _head(err, 200000)
    written = _diff(before, snapshot(work))
    leftover_tmp = sorted(os.listdir(tmp)) if tmp.exists() else []
    outside = [f"~/.cache/effrecipes:{d}" for d in _diff(cache_before, snapshot(CACHE))]
    outside += [f"/tmp/{n}" for n in sorted(_tmp_names() - tmp_before) if SUSPECT_TMP.search(n)]
    outside += [f"$TMPDIR/{n}" for n in leftover_tmp]
    tb = "Traceback (most recent call last)" in full_err or "Traceback (most recent call last)" in stdout
    lines = full_err.splitlines()
    one_line = full_err.endswith("\n") and full_err.count("\n") == 1 and full_err.startswith("error:")
    if hang:
        verdict = "hang"
    elif tb:
        verdict = "traceback"
    elif rc == 0:
        verdict = "ok" if case.expect == "ok" else "accepted"
        if case.expect == "ok" and (outside or (written and not case.real and case.tool != "report")):
            verdict = "wrote-files"
    elif rc == 2 and one_line and not written and not outside:
        verdict = "held"
    elif rc == 2 and one_line:
        verdict = "wrote-files"
    elif written or outside:
        verdict = "wrote-files"
    elif rc == 2 and len(lines) > 1 and any(ln.startswith("error:") for ln in lines):
        verdict = "multi-line"
    else:
        verdict = "other"
    _restore_perms(sb)
    shutil.rmtree(sb, ignore_errors=True)
    first = next((ln for ln in lines if ln.startswith("error:")), lines[0] if lines else "")
    if rc < 0:
        first = f"killed by {signal.Signals(-rc).name}" + (" (the timeout)" if hang else "") + (f"; {first}" if first else "")
    return {"index": idx, "category": case.cat, "tool": case.tool, "label": case.label,
            "argv": [a if len(a) <= 300 else f"{a[:280]}...({len(a):,} chars)" for a in case.argv[:40]]
            + ([f"... ({len(case.argv)} args)"] if len(case.argv) > 40 else []),
            "real_run": case.real, "expect": case.expect, "note": case.note, "verdict": verdict,
            "exit_code": rc, "seconds": round(seconds, 2), "stderr_lines": len(lines),
            "first_line": first[:400], "where": _where(full_err, stderr) if tb else None,
            "written": written[:20], "outside": outside[:20],
            "input": case.input_text()[:300] if not isinstance(case.input_text(), bytes) else "",
            "stderr_tail": stderr[-2500:], "stdout_head": stdout[:500]}


# --------------------------------------------------------------------------- warm-up and main

def warm_up(root: Path) -> None:
    """Import the CLIs and run one good case of each in-process (torch, Composer, matplotlib and
    the registries load here once; every forked case inherits them)."""
    from effrecipes.cli import main as run_main
    from effrecipes.matrix.cli import main as ablate_main
    from effrecipes.report.cli import main as report_main

    MAINS.update(run=run_main, ablate=ablate_main, report=report_main)
    d = root / "warmup"
    d.mkdir()
    (d / "r.yaml").write_text(dump_yaml(BASE_RECIPE))
    (d / "spec.yaml").write_text(dump_yaml(BASE_SPEC))
    (d / "base.yaml").write_text(dump_yaml(MATRIX_BASE))
    _copy_matrix(d)
    cwd = os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.chdir(d)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            codes = (run_main(["r.yaml", *DRY]), run_main(["r.yaml", *DRY, "optimizer.lr=-1"]),
                     ablate_main(["spec.yaml", *ADRY]), report_main(["m"]))
    finally:
        os.chdir(cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
    if codes != (0, 2, 0, 0):
        raise SystemExit(f"warm-up failed: exit codes {codes}")
    shutil.rmtree(d)


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def md(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(CATEGORIES), action="append",
                   help="run only this category (repeatable): " + ", ".join(f"{k} = {v}" for k, v in CATEGORIES.items()))
    p.add_argument("--limit", type=int, default=None, help="at most N cases per category")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per case (a timeout is a hang)")
    p.add_argument("--mem-gib", type=float, default=4.0,
                   help="address space each case may add beyond the warmed-up process (GiB)")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    p.add_argument("--out", default=None, help="JSON result path (default benchmarks/results/reliability-<date>.json)")
    args = p.parse_args(argv)

    cases = build_cases()
    if args.only:
        cases = [c for c in cases if c.cat in args.only]
    if args.limit is not None:
        kept: list[Case] = []
        per: dict[str, int] = {}
        for c in cases:
            if per.get(c.cat, 0) < args.limit:
                kept.append(c)
                per[c.cat] = per.get(c.cat, 0) + 1
        cases = kept
    if args.list:
        for i, c in enumerate(cases):
            print(f"{i:4d} {c.cat:7s} {c.tool:6s} {'REAL ' if c.real else ''}{c.label}")
        print(f"{len(cases)} cases ({sum(c.cat != 'control' for c in cases)} bad/odd)")
        return 0

    from _common import RESULTS, machine, write_result

    mach = machine()
    root = Path(tempfile.mkdtemp(prefix="effrecipes-reliability-"))
    t_start = time.time()
    try:
        print(f"warming up (imports, one good case of each CLI) in {root} ...", flush=True)
        warm_up(root)
        as_limit = int(_vm_size() + args.mem_gib * 2**30) if args.mem_gib > 0 else 0
        results = []
        for i, c in enumerate(cases):
            res = run_case(c, i, root, args.timeout, as_limit)
            results.append(res)
            flag = "" if res["verdict"] in ("held", "ok") else f"  <-- {res['verdict']}"
            print(f"[{i + 1:3d}/{len(cases)}] {c.cat} {c.tool:6s} {res['verdict']:11s} rc={res['exit_code']:<3} "
                  f"{res['seconds']:6.2f}s  {c.label[:70]}{flag}", flush=True)
    finally:
        _restore_perms(root)
        shutil.rmtree(root, ignore_errors=True)

    verdicts = ["held", "traceback", "accepted", "multi-line", "wrote-files", "hang", "other"]
    counts: dict[str, dict[str, int]] = {}
    for r in results:
        cat = counts.setdefault(r["category"], {"cases": 0, **{v: 0 for v in verdicts + ["ok"]}})
        cat["cases"] += 1
        cat[r["verdict"]] += 1
    rows = []
    order = [k for k in CATEGORIES if k in counts]
    total = {"cases": 0, **{v: 0 for v in verdicts + ["ok"]}}
    for k in order:
        c = counts[k]
        rows.append([f"{k} ({CATEGORIES[k]})", c["cases"], c["held"] + c["ok"], c["traceback"], c["accepted"],
                     c["multi-line"] + c["wrote-files"] + c["hang"] + c["other"],
                     c["multi-line"], c["wrote-files"], c["hang"], c["other"]])
        if k != "control":
            for key in total:
                total[key] += c[key]
    rows.append(["**all bad/odd inputs**", total["cases"], total["held"], total["traceback"], total["accepted"],
                 total["multi-line"] + total["wrote-files"] + total["hang"] + total["other"],
                 total["multi-line"], total["wrote-files"], total["hang"], total["other"]])
    table = md(["category", "cases", "held", "traceback", "accepted", "other",
                "(of which) multi-line", "wrote-files", "hang", "misc"], rows)
    print()
    print(table)
    bad = [r for r in results if r["verdict"] not in ("held", "ok")]
    print(f"\n{total['cases']} bad/odd cases, {total['held']} held; {len(bad)} did not hold "
          f"(incl. controls); {time.time() - t_start:.0f}s")
    for r in bad:
        what = r["where"] if r["verdict"] == "traceback" else r["first_line"]
        print(f"- [{r['verdict']}] {r['category']} {r['tool']} {r['label'][:80]}: rc={r['exit_code']} {what[:200]}")
    out = {"benchmark": "reliability", "date": str(datetime.date.today()),
           "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else f"reliability.main({argv})",
           "machine": mach, "seed": SEED, "timeout_s": args.timeout,
           "contract": "bad input: exit 2, one 'error:' line on stderr, no traceback, nothing written "
                       "(the case's cwd, its TMPDIR, ~/.cache/effrecipes and suspicious /tmp names are "
                       "checked), no hang",
           "runs_as_root": os.geteuid() == 0, "wall_seconds": round(time.time() - t_start, 1),
           "counts": {k: counts[k] for k in order}, "total_bad_inputs": total, "summary_table": table,
           "not_held": bad}
    path = Path(args.out) if args.out else RESULTS / f"reliability-{datetime.date.today()}.json"
    write_result(out, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
