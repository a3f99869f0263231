"""The CLIs' contract for user mistakes (issue #15): exit code 2, exactly one line
`error: FILE: FIELD: message`, no traceback, nothing written, before anything is trained; and the
command-line habits of a mature tool (--version, --help, --list, --json, --key=value)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from effrecipes.cli import main as run_main
from effrecipes.matrix.cli import main as ablate_main
from effrecipes.recipe import load_recipe
from effrecipes.report.cli import main as report_main
from effrecipes.runner import run
from tests.conftest import REPO, tiny_recipe, write_recipe


def call(fn: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run a CLI's main in-process; argparse's exits (--help, --version, bad flags) return codes."""
    try:
        code = fn(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


def bad_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *args: str,
               fragments: tuple[str, ...] = (), blamed: str = "r.yaml") -> str:
    """Write `text` as r.yaml, run composer-run on it, check the contract (the line names the file
    `blamed`); return the error line."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    before = files_under(tmp_path)
    code, out, err = call(run_main, capsys, str(path), *args)
    assert_one_line_error(code, err, f"error: {tmp_path / blamed}: ", *fragments)
    assert files_under(tmp_path) == before, "something was written"
    return err


def recipe_text(tmp_path: Path, **overrides: Any) -> str:
    return yaml.safe_dump(tiny_recipe(tmp_path, **overrides), sort_keys=False)


# ------------------------------------------------------------ item 1: algorithm arguments

# The exact inputs of issue #15 item 1, as YAML (so `1e-1` or `0ep` are read by the recipe loader).
ALGO_CASES = [
    ("label_smoothing: {smoothing: 2.0}", "algorithms.label_smoothing.smoothing: Input should be less than or equal to 1"),
    ("mixup: {alpha: -0.2}", "algorithms.mixup.alpha: Input should be greater than or equal to 0"),
    ("mixup: {alpha: .nan}", "algorithms.mixup.alpha: Input should be a finite number"),
    ("mixup: {alpha: nan}", "algorithms.mixup.alpha: Input should be a valid number"),
    ("cutmix: {alpha: -1}", "algorithms.cutmix.alpha: Input should be greater than or equal to 0"),
    ("cutout: {length: .nan}", "algorithms.cutout.length: Input should be a finite number"),
    ("cutout: {length: .inf}", "algorithms.cutout.length: Input should be a finite number"),
    ("cutout: {num_holes: 2.5}", "algorithms.cutout.num_holes: Input should be a valid integer"),
    ("sam: {rho: -0.05}", "algorithms.sam.rho: Input should be greater than or equal to 0"),
    ("sam: {interval: 0}", "algorithms.sam.interval: Input should be greater than or equal to 1"),
    ("swa: {update_interval: 0ep}", "algorithms.swa.update_interval: must be above zero"),
    ('squeeze_excite: {min_channels: "16"}', "algorithms.squeeze_excite.min_channels: Input should be a valid integer"),
    ("ema: {half_life: 0ba}", "algorithms.ema.half_life: must be above zero"),
    ("progressive_resizing: {initial_scale: 0}", "algorithms.progressive_resizing.initial_scale: Input should be greater than 0"),
    ("selective_backprop: {keep: 0}", "algorithms.selective_backprop.keep: Input should be greater than 0"),
    ("selective_backprop: {keep: -1}", "algorithms.selective_backprop.keep: Input should be greater than 0"),
    ("randaugment: {depth: -1}", "algorithms.randaugment.depth: Input should be greater than or equal to 0"),
    ("randaugment: {augmentation_set: nonsense}", "algorithms.randaugment.augmentation_set: Input should be 'all', 'safe' or 'original'"),
    ("augmix: {augmentation_set: nonsense}", "algorithms.augmix.augmentation_set: Input should be"),
    ("ghost_batchnorm: {ghost_batch_size: 0}", "algorithms.ghost_batchnorm.ghost_batch_size: Input should be greater than or equal to 1"),
    ("blurpool: {min_channels: -3}", "algorithms.blurpool.min_channels: Input should be greater than or equal to 0"),
    ("swa: {update_interval: 1.5ba}", "algorithms.swa.update_interval: batches ('ba') must be a whole number"),
    ("ema: {half_life: 5tok}", "algorithms.ema.half_life: not a time"),
    ("colout: {resize_target: true, batch: false}", "algorithms.colout: resize_target: true needs batch: true"),
    ("stochastic_depth: {}", "algorithms.stochastic_depth.target_layer_name: required argument is missing"),
]


@pytest.mark.parametrize("mode", ["--dry-run", "train"])
@pytest.mark.parametrize("algo,fragment", ALGO_CASES, ids=[c[0] for c in ALGO_CASES])
def test_bad_algorithm_arguments_are_one_line_errors_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], algo: str, fragment: str, mode: str) -> None:
    text = recipe_text(tmp_path) + f"algorithms:\n  - {algo}\n"
    bad_recipe(tmp_path, capsys, text, *(["--dry-run"] if mode == "--dry-run" else ["--quiet"]),
               fragments=(fragment,))


def test_yaml12_numbers_are_floats_everywhere(tmp_path: Path) -> None:
    text = recipe_text(tmp_path) + "algorithms:\n  - label_smoothing: {smoothing: 1e-1}\n"
    text = text.replace("lr: 0.05", "lr: 5e-2\n  weight_decay: 5e-4")
    path = tmp_path / "r.yaml"
    path.write_text(text)
    r = load_recipe(path)
    assert r.algorithms == [{"label_smoothing": {"smoothing": 0.1}}]
    assert r.optimizer.lr == 0.05 and r.optimizer.weight_decay == 5e-4
    r = load_recipe(path, ["optimizer.lr=1e-3", "algorithms.mixup.alpha=2e-1", "budget.flops=1e9"])
    assert r.optimizer.lr == 1e-3 and r.algorithms[1] == {"mixup": {"alpha": 0.2}}
    # as --key=value flags too (what W&B sweep agents pass)
    from effrecipes.cli import build_parser, dotted_flags_to_overrides
    argv = dotted_flags_to_overrides(["r.yaml", "--optimizer.lr=1e-3", "--dry-run", "--seed", "3"],
                                     build_parser(), ["seed", "optimizer"])
    assert argv == ["r.yaml", "--dry-run", "optimizer.lr=1e-3", "seed=3"]


# ------------------------------------------------------------ item 2: numbers, types, keys

def _with(tmp_path: Path, **overrides: Any) -> str:
    return recipe_text(tmp_path, **overrides)


INF, NAN = float("inf"), float("nan")
VALUE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"optimizer.betas": [1.0, 0.999], "optimizer.name": "adam"}, "optimizer.betas: each beta must be in [0, 1)"),
    ({"optimizer.betas": [-0.1, 0.999], "optimizer.name": "adam"}, "optimizer.betas: each beta must be in [0, 1)"),
    ({"optimizer.betas": [NAN, 0.999], "optimizer.name": "adam"}, "optimizer.betas.0: Input should be a finite number"),
    ({"budget": {"flops": None, "max_epochs": INF}}, "budget.max_epochs: Input should be a finite number"),
    ({"budget": {"flops": 1e12, "max_epochs": 1e300}}, "budget.max_epochs: at most 100,000 epochs"),
    ({"budget": {"flops": None, "max_seconds": INF}}, "budget.max_seconds: Input should be a finite number"),
    ({"budget": {"flops": None, "max_seconds": 1e300}}, "budget.max_seconds: at most 10,000,000 seconds"),
    ({"budget": {"flops": 1e300}}, "budget.flops: at most 1e+24 FLOPs"),
    ({"eval.every_epochs": INF}, "eval.every_epochs: Input should be a finite number"),
    ({"optimizer.lr": INF}, "optimizer.lr: Input should be a finite number"),
    ({"optimizer.weight_decay": INF}, "optimizer.weight_decay: Input should be a finite number"),
    ({"scheduler": {"name": "one_cycle", "div_factor": INF}}, "scheduler.div_factor: Input should be a finite number"),
    ({"model.kwargs": {"dropout": [0.1, NAN]}}, "model.kwargs: numbers must be finite (got nan)"),
    ({"data.batch_size": True}, "data.batch_size: Input should be a valid integer"),
    ({"optimizer.lr": True}, "optimizer.lr: Input should be a valid number"),
    ({"seed": True}, "seed: Input should be a valid integer"),
    ({"output.root": ""}, "output.root: String should have at least 1 character"),
    ({"optimizer": {"name": "adam", "lr": 1e-3, "momentum": 0.5}}, "optimizer: momentum=0.5 is ignored by adam"),
    ({"optimizer": {"name": "adamw", "lr": 1e-3, "nesterov": True}}, "optimizer: nesterov is ignored by adamw"),
    ({"optimizer": {"name": "sgd", "lr": 1e-3, "betas": [0.5, 0.9]}}, "optimizer: betas are ignored by sgd"),
    ({"budget": {"flops": None, "max_epochs": "100ba"}}, "budget.max_epochs: unit 'ba' (batches) is not accepted here"),
    ({"name": "n" * 300}, "name: at most 120 characters (this one has 300)"),
    ({"output.run_name": "r" * 300}, "output.run_name: at most 120 characters (this one has 300)"),
]


@pytest.mark.parametrize("overrides,fragment", VALUE_CASES, ids=[c[1][:40] for c in VALUE_CASES])
def test_bad_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        overrides: dict[str, Any], fragment: str) -> None:
    # not --dry-run: the run itself must refuse before creating anything
    bad_recipe(tmp_path, capsys, _with(tmp_path, **overrides), "--quiet", fragments=(fragment,))


def test_ints_still_accepted_for_float_fields_and_time_strings_for_epochs(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"optimizer.lr": 1, "eval.every_epochs": "0.5ep",
                                                           "budget": {"flops": 1e9, "max_epochs": "5ep"}}))
    r = load_recipe(path)
    assert r.optimizer.lr == 1.0 and r.eval.every_epochs == 0.5 and r.budget.max_epochs == 5.0
    assert load_recipe(path, ["budget.max_seconds=3600sec"]).budget.max_seconds == 3600.0


@pytest.mark.parametrize("interval,expected", [("3ba", [3, 6, 9, 12]), ("0.25dur", [7, 14, 21, 28]),
                                               (0.5, [4, 8, 12, 16])])
def test_eval_interval_takes_composer_time_strings(tmp_path: Path, interval: Any,
                                                   expected: list[int]) -> None:
    """Validation runs every N batches ('Nba'), every fraction of the run ('Ndur', of the 29
    planned batches) or every N epochs (8 batches each), and once more at the end."""
    recipe = load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path, **{"eval.every_epochs": interval})))
    run(recipe, quiet=True)
    rows = (next(tmp_path.rglob("history.csv"))).read_text().splitlines()[1:]
    batches = [int(r.split(",")[1]) for r in rows]
    assert batches[:4] == expected and batches[-1] == 29


DUPLICATES = """\
name: tiny
data: {name: synthetic, batch_size: 16, kwargs: {num_train: 160, num_test: 64, channels: 1, image_size: 12, num_classes: 4}}
model: {name: gap_1p5k_dw}
algorithms: [mixup]
budget: {flops: 2e8}
output: {root: ROOT}
budget: {flops: 1e12}
algorithms: [cutmix]
"""


@pytest.mark.parametrize("section,first,line", [("budget", 5, 7), ("algorithms", 4, 8)])
def test_duplicate_yaml_keys_name_the_key_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   section: str, first: int, line: int) -> None:
    text = DUPLICATES.replace("ROOT", str(tmp_path / "runs"))
    if section == "algorithms":  # only the second algorithms: is duplicated
        text = text.replace("budget: {flops: 1e12}\n", "")
        line -= 1
    err = bad_recipe(tmp_path, capsys, text, "--quiet")
    assert (f"invalid YAML at line {line}: duplicate key '{section}' (first at line {first}); "
            "write each key once") in err, err


def test_duplicate_key_in_an_override_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = call(run_main, capsys, str(path), "budget={flops: 1e9, flops: 1e12}", "--quiet")
    assert_one_line_error(code, err, "override budget: duplicate key 'flops'")


def test_threads_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = call(run_main, capsys, str(path), "--threads", "-5")
    assert_one_line_error(code, err, "--threads: must be between 1 and 4096 (got -5)")
    assert not (tmp_path / "runs").exists()


def test_tiny_max_epochs_blames_max_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget": {"flops": 1e12, "max_epochs": 1e-9}}))
    code, _, err = call(run_main, capsys, str(path), "--dry-run")
    assert_one_line_error(code, err, f"{path}: budget.max_epochs:")


# ------------------------------------------------------------ item 3: files and paths

@pytest.mark.timeout(60)  # today's code blocks forever opening a FIFO: the timeout fails the test
@pytest.mark.parametrize("where", ["recipe", "base"])
def test_fifo_is_refused_without_hanging(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    if where == "recipe":
        code, _, err = call(run_main, capsys, str(fifo), "--dry-run")
        assert_one_line_error(code, err, f"error: {fifo}: is a FIFO; recipes are read from regular files only")
    else:
        path = tmp_path / "r.yaml"
        path.write_text("base: pipe.yaml\n" + recipe_text(tmp_path))
        code, _, err = call(run_main, capsys, str(path), "--dry-run")
        assert_one_line_error(code, err, f"{fifo}: is a FIFO")


@pytest.fixture
def memory_cap() -> Any:
    """Cap this process's address space at its current size + 2 GiB for the test, so that today's
    code reading /dev/zero fails fast with MemoryError instead of filling the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = vm + 2 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str,
                             memory_cap: Any) -> None:
    code, _, err = call(run_main, capsys, device, "--dry-run")
    assert_one_line_error(code, err, f"error: {device}: is a device; recipes are read from regular files only")
    link = tmp_path / "dev.yaml"  # a base recipe that is a device in disguise
    link.symlink_to(device)
    path = tmp_path / "r.yaml"
    path.write_text("base: dev.yaml\n" + recipe_text(tmp_path))
    code, _, err = call(run_main, capsys, str(path), "--dry-run")
    assert_one_line_error(code, err, "is a device")


def test_file_growing_past_the_limit_while_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size limit holds while reading, not only by stat (a file can grow or lie about its size)."""
    from effrecipes import recipe
    from effrecipes.errors import RecipeError

    path = tmp_path / "r.yaml"
    path.write_text("name: " + "a" * 5000 + "\n")
    real_fstat = os.fstat
    monkeypatch.setattr(recipe.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 10, *real_fstat(fd)[7:10])))
    with pytest.raises(RecipeError, match="larger than 1,000 bytes"):
        recipe.read_file_bytes(path, limit=1000)


def test_symlink_loops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    code, _, err = call(run_main, capsys, str(loop), "--dry-run")
    assert_one_line_error(code, err, f"error: {loop}: symlink loop")
    path = tmp_path / "r.yaml"
    path.write_text("base: loop.yaml\n" + recipe_text(tmp_path))
    code, _, err = call(run_main, capsys, str(path), "--dry-run")
    assert_one_line_error(code, err, f"{path}: base: base recipe 'loop.yaml': symlink loop")


@pytest.mark.parametrize("override,fragment", [
    ("data.kwargs=" + "[" * 5000 + "]" * 5000, "override data.kwargs: nested deeper than 50 levels"),
    ("notes=" + "{a: " * 5000 + "1" + "}" * 5000, "override notes: nested deeper than 50 levels"),
    ("data.kwargs." + "a." * 5000 + "a=1", "the key has 5,003 parts; recipe keys have at most 20"),
])
def test_deeply_nested_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                                 fragment: str) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = call(run_main, capsys, str(path), override, "--quiet")
    assert_one_line_error(code, err, fragment)
    assert len(err) < 400 and not (tmp_path / "runs").exists()


def test_deeply_nested_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_recipe(tmp_path, capsys, recipe_text(tmp_path) + "notes: " + "[" * 5000 + "]" * 5000 + "\n",
               fragments=("invalid YAML at line", "nested deeper than 50 levels"))


@pytest.mark.parametrize("key", ["name", "model.name", "output.run_name", "optimizer.lrr", "output.root"])
def test_long_values_are_cut_in_error_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    huge = "x" * 200_000
    arg = {"optimizer.lrr": f"optimizer.{huge}=1", "output.root": f"output.root=/proc/{huge}"}.get(
        key, f"{key}={huge}")
    code, _, err = call(run_main, capsys, str(path), arg, "--quiet")
    assert_one_line_error(code, err)
    assert len(err) < 2100 and "chars)" in err, err[:3000]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name,content,fragment", [
    ("credentials", "root_s3cr3t: x\n", "'credentials' is not a recipe: a base must be a .yaml or .yml file"),
    ("shadow", "root:$6$s3cr3t:19000:0:99999:7:::\n", "'shadow' is not a recipe"),
    ("tagged.yaml", "name: !s3cr3t x\n", "YAML tag refused (an unsupported tag)"),
    ("list.yaml", "- s3cr3t\n", "expected a mapping"),
    ("broken.yaml", "s3cr3t: [x\n", "invalid YAML at line"),
    ("dupe.yaml", "s3cr3t: 1\ns3cr3t: 2\n", "duplicate key (first at line 1)"),
])
def test_base_accepts_only_yaml_mappings_and_never_echoes_content(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, fragment: str) -> None:
    (tmp_path / name).write_text(content)
    text = f"base: {name}\n" + recipe_text(tmp_path)
    err = bad_recipe(tmp_path, capsys, text, "--dry-run", fragments=(fragment,),
                     blamed="r.yaml" if "not a recipe" in fragment else name)
    assert "s3cr3t" not in err, err


# ------------------------------------------------------------ item 9: CLI habits

@pytest.mark.parametrize("fn", [run_main, ablate_main, report_main], ids=["run", "ablate", "report"])
def test_version_and_help(capsys: pytest.CaptureFixture[str], fn: Callable[[list[str]], int]) -> None:
    from importlib import metadata
    code, out, _ = call(fn, capsys, "--version")
    assert code == 0 and f"effrecipes {metadata.version('effrecipes')}" in out
    code, out, _ = call(fn, capsys, "--help")
    assert code == 0 and "examples:" in out and "environment:" in out and "exit codes:" in out
    if fn is not report_main:
        assert "EFFRECIPES_THREADS" in out
    assert "--out" in out and "--output" not in out  # one name; the old one is a hidden alias


def test_out_flag_on_every_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_matrix import make_spec

    # composer-run --out DIR sets output.root (an unwritable one shows it was used)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = call(run_main, capsys, str(path), "--out", "/proc/no-such-dir", "--quiet")
    assert_one_line_error(code, err, "output.root")
    # composer-ablate --out, and its old --output still works
    spec = make_spec(tmp_path)
    for flag in ("--out", "--output"):
        code, out, err = call(ablate_main, capsys, str(spec), flag, str(tmp_path / "elsewhere"),
                              "--list-cells", "--json")
        assert code == 0, err
        assert json.loads(out)


def test_list_optimizers_schedulers_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(run_main, capsys, "--list", "optimizers")
    assert code == 0 and "adamw" in out and "decoupled_sgdw" in out
    code, out, _ = call(run_main, capsys, "--list", "schedulers", "--json")
    names = [e["name"] for e in json.loads(out)]
    assert code == 0 and "one_cycle" in names and "cosine" in names
    code, out, _ = call(run_main, capsys, "--list", "algorithms", "--json", "--pattern", "c*")
    assert code == 0 and [e["name"] for e in json.loads(out)] == ["channels_last", "colout", "cutmix", "cutout"]


def test_list_optimizers_does_not_import_torch() -> None:
    code = ("import sys, contextlib, io\nfrom effrecipes.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['--list', 'schedulers']) == 0\n"
            "heavy = [m for m in ('torch', 'composer') if m in sys.modules]\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("args,fragment", [
    (["--optimizer.lr=fast"], "optimizer.lr: Input should be a valid number"),
    (["--data.batch_size", "0"], "data.batch_size: Input should be greater than or equal to 1"),
    (["--seed=-1"], "seed: Input should be greater than or equal to 0"),
    (["--optimizer.lr"], "--optimizer.lr needs a value"),
])
def test_overrides_as_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                            fragment: str) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = call(run_main, capsys, str(path), *args, "--quiet")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "runs").exists()


def test_ablate_overrides_edit_the_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_matrix import make_spec

    spec = make_spec(tmp_path)
    code, out, err = call(ablate_main, capsys, str(spec), "seeds=[0,1]", "budget.flops=3e8",
                          "--grid.optimizer.lr=[0.1,0.01]", "--list-cells", "--json")
    assert code == 0, err
    cells = json.loads(out)
    assert len(cells) == 2 * 2 * 2  # (baseline, cutout) x 2 lr x 2 seeds
    assert all("budget.flops=3e8" in c["overrides"] for c in cells)
    assert {c["cell_id"] for c in cells} >= {"baseline__lr=0.1__s0", "cutout__lr=0.01__s1"}
    code, _, err = call(ablate_main, capsys, str(spec), "grid.optimizer.lr=[0.1]", "optimizer.lr=0.5",
                        "--list-cells")
    assert_one_line_error(code, err, "optimizer.lr is varied by the grid")
    code, _, err = call(ablate_main, capsys, str(spec), "seeds=[true]", "--list-cells")
    assert_one_line_error(code, err, "seeds.0: Input should be a valid integer")


def test_grid_only_spec_needs_no_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_matrix import make_spec

    spec = make_spec(tmp_path, algorithms={}, grid={"optimizer.lr": [0.1, 0.01]})
    code, out, err = call(ablate_main, capsys, str(spec), "--list-cells", "--json")
    assert code == 0, err
    assert [c["cell_id"] for c in json.loads(out)] == ["baseline__lr=0.1__s0", "baseline__lr=0.01__s0"]
    spec = make_spec(tmp_path, algorithms={"mode": "all_subsets"}, grid={"optimizer.lr": [0.1]})
    code, _, err = call(ablate_main, capsys, str(spec), "--list-cells")
    assert_one_line_error(code, err, "mode all_subsets needs at least one technique")


# ------------------------------------------------------------ item 5: --json is JSON only

def test_json_stdout_is_json_only_with_wandb(tmp_path: Path) -> None:
    """With W&B logging offline, its `wandb sync` hint goes to stderr; stdout parses as JSON."""
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7,
                                      "loggers.wandb": {"enabled": True, "mode": "offline",
                                                        "project": "effrecipes-test"}})
    path = write_recipe(tmp_path, recipe)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "EFFRECIPES_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "effrecipes.cli", str(path), "--json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout)
    assert metrics["stop_reason"] == "flops"
    assert "wandb sync" in proc.stderr


# ------------------------------------------- inputs found by benchmarks/reliability.py (2026-11-30)

BILLION_LAUGHS = "x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

HARNESS_TEXT_CASES = [  # (recipe text appended to a valid tiny recipe, fragment of the error)
    ("algorithms: [{ema: {half_life: 1e400ba}}]", "too large; at most 1e15"),
    ("algorithms: [{swa: {update_interval: 1e400ep}}]", "too large; at most 1e15"),
    ("optimizer: {name: sgd, lr: !!float abc}", "cannot read a value"),
    ("optimizer: {name: sgd, lr: !!int abc}", "cannot read a value"),
    ("notes: !!timestamp abc", "cannot read a value"),
    ("notes: !!bool maybe", "cannot read a value"),
    ("model: {name: gap_1p5k_dw, kwargs: " + BILLION_LAUGHS.replace("\n", ", ").rstrip(", ").join("{}") + "}",
     "aliases expand to more than"),
]


@pytest.mark.parametrize("extra,fragment", HARNESS_TEXT_CASES, ids=[c[1][:30] + str(i) for i, c in enumerate(HARNESS_TEXT_CASES)])
def test_harness_yaml_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 extra: str, fragment: str) -> None:
    base = {k: v for k, v in tiny_recipe(tmp_path).items() if k not in ("algorithms", "optimizer", "notes", "model")}
    text = yaml.safe_dump(base, sort_keys=False) + (
        "" if extra.startswith("model:") else "model: {name: gap_1p5k_dw}\n") + extra + "\n"
    bad_recipe(tmp_path, capsys, text, "--dry-run", fragments=(fragment,))


def test_billion_laughs_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_recipe(tmp_path, capsys, recipe_text(tmp_path) + BILLION_LAUGHS.replace("x:", "zz:"),
               "--dry-run", fragments=("aliases expand to more than 200,000 values",))


@pytest.mark.parametrize("overrides,fragment", [
    ({"budget.flops": 10 ** 400}, "budget.flops: must be a positive, finite number of FLOPs"),
    ({"budget.max_seconds": "1e400sec"}, "too large; at most 1e15"),
    ({"output.root": "a\0b"}, "output.root: not a valid path (it holds a NUL byte)"),
    ({"output.root": "x" * 300}, "output.root: a path component is 300 bytes long"),
    ({"output.root": "~nosuchuser_effrecipes/runs"}, "cannot expand '~nosuchuser_effrecipes': no such user"),
])
def test_harness_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            overrides: dict[str, Any], fragment: str) -> None:
    bad_recipe(tmp_path, capsys, recipe_text(tmp_path, **overrides), fragments=(fragment,))


def test_base_with_nul_or_unknown_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for base, fragment in (("b\0.yaml", "base: not a valid path"),
                           ("~nosuchuser_effrecipes/b.yaml", "base: cannot expand")):
        bad_recipe(tmp_path, capsys, yaml.safe_dump({"base": base, "name": "x"}), fragments=(fragment,))


def test_a_5000_digit_override_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = call(run_main, capsys, str(path), "--dry-run", "optimizer.lr=" + "9" * 5000)
    assert code == 2 and err.count("\n") == 1 and "cannot read a value" in err, err


def test_dry_run_reports_data_config_errors_instead_of_planning_around_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only missing files are planned around (DataMissing); `data.kwargs: {bogus: 1}` on the
    bundled digits is the error a real run would give."""
    text = recipe_text(tmp_path, **{"data": {"name": "digits", "batch_size": 16, "kwargs": {"bogus": 1}}})
    bad_recipe(tmp_path, capsys, text, "--dry-run", fragments=("does not take bogus",))


def test_dry_run_checks_the_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    bad_recipe(tmp_path, capsys, recipe_text(tmp_path, **{"trainer.device": "gpu"}), "--dry-run",
               fragments=("trainer.device",))
