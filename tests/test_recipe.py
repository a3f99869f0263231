"""Recipe loading: safe YAML, typed schema, overrides, and one-line errors with exit code 2."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from effrecipes.cli import main
from effrecipes.errors import RecipeError
from effrecipes.recipe import apply_override, load_recipe, parse_flops, parse_override
from tests.conftest import tiny_recipe, write_recipe

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("text,value", [(1e14, 1e14), ("1e14", 1e14), ("100T", 1e14),
                                        ("2.5G", 2.5e9), ("3 TFLOPs", 3e12), (12, 12.0)])
def test_parse_flops(text: Any, value: float) -> None:
    assert parse_flops(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["abc", "-5", 0, -1.0, float("inf"), True, "1e14X"])
def test_parse_flops_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_flops(bad)


def test_overrides_apply_dotted_paths_and_algorithms(tmp_path: Path) -> None:
    data = tiny_recipe(tmp_path)
    data["algorithms"] = [{"cutout": {"length": 4}}]
    path = write_recipe(tmp_path, data)
    r = load_recipe(path, ["budget.flops=5e8", "optimizer.lr=0.01", "algorithms.cutout.length=6",
                           "algorithms.mixup={alpha: 0.3}", "data.augment=[hflip]"])
    assert r.budget.flops == 5e8 and r.optimizer.lr == 0.01
    assert r.algorithms == [{"cutout": {"length": 6}}, {"mixup": {"alpha": 0.3}}]
    assert r.data.augment == ["hflip"]
    r = load_recipe(path, ["algorithms.cutout=null"])
    assert r.algorithms == []


def test_parse_override_requires_equals() -> None:
    with pytest.raises(RecipeError, match="key.path=value"):
        parse_override("optimizer.lr")
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_override_into_non_section_is_an_error() -> None:
    with pytest.raises(RecipeError, match="not a section"):
        apply_override({"optimizer": "sgd"}, ["optimizer", "lr"], 1)


def test_all_shipped_recipes_validate() -> None:
    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    assert recipes
    for path in recipes:
        if "ablations" in path.parts or path.name.endswith("_grid.yaml"):
            continue  # matrix specs: validated in tests/test_matrix.py
        load_recipe(path)


BAD_CASES: list[tuple[str, Any, str]] = [
    # (dotted key to set or special, value, expected fragment of the message)
    ("model.nmae", "x", "model.nmae: unknown key; valid keys (closest first): name"),
    ("optimizer.lr", "fast", "optimizer.lr: Input should be a valid number"),
    ("optimizer.name", "sgdd", "optimizer.name: unknown optimizer 'sgdd'; valid choices (closest first): sgd"),
    ("model.name", "gap_1p5k", "model.name: unknown model 'gap_1p5k'; valid choices (closest first): gap_1p5k_dw"),
    ("data.name", "cifar11", "data.name: unknown dataset 'cifar11'; valid choices (closest first): cifar10"),
    ("algorithms", [{"blurpol": {}}], "algorithms.blurpol: unknown algorithm 'blurpol'; valid choices (closest first): blurpool"),
    ("algorithms", [{"cutout": {"lenght": 4}}], "algorithms.cutout.lenght: unknown argument 'lenght'; valid (closest first): length"),
    ("algorithms", [{"swa": {"swa_start": "0.9dur", "swa_end": "0.5dur"}}], "algorithms.swa: swa_end must be > swa_start"),
    ("algorithms", [{"mixup": {}}, {"mixup": {}}], "listed twice"),
    ("algorithms", [{"mixup": {}}, {"cutmix": {}}], "algorithms: cutmix and mixup conflict"),
    ("budget.flops", -1, "budget.flops: must be a positive, finite number of FLOPs"),
    ("budget.flops", "lots", "budget.flops: cannot read 'lots' as FLOPs"),
    ("budget", {}, "set at least one of budget.flops"),
    ("data.batch_size", 0, "data.batch_size: Input should be greater than or equal to 1"),
    ("data.batch_size", 10**9, "data.batch_size: Input should be less than or equal to 65536"),
    ("output.run_name", "../escape", "output.run_name: use letters, digits"),
    ("seed", "x", "seed: Input should be a valid integer"),
    ("seed", 2**32, "seed: Input should be less than or equal to 4294967295"),  # found by hypothesis
    ("extra_section", 1, "extra_section: unknown key; valid keys (closest first)"),
    ("model.kwargs", {"dropuot": 0.1}, "model.kwargs.dropuot: unknown argument 'dropuot' (accepted: dropout"),
    ("model", {"name": "gap_custom", "kwargs": {"layers": ["c8", "x3"]}},
     "model.kwargs: cannot build gap_custom: layer 'x3' is not c<N>"),
    ("model", {"name": "gap_custom", "kwargs": {"pool": "max"}},
     "model.kwargs: cannot build gap_custom: pool 'max' is not one of avg, depthwise"),
    ("model", {"name": "gap_custom", "kwargs": {"act": "tanh"}},
     "model.kwargs: cannot build gap_custom: act 'tanh' is not one of relu, silu, gelu"),
    ("model", {"name": "gap_custom", "kwargs": {"norm": "none"}},
     "model.kwargs: cannot build gap_custom: norm 'none' is not one of after_act, before_act"),
    ("model", {"name": "resnet18", "kwargs": {"widht": 2}}, "model.kwargs: cannot build resnet18:"),
]


@pytest.mark.parametrize("key,value,fragment", BAD_CASES, ids=[c[0] + ":" + str(c[1])[:20] for c in BAD_CASES])
def test_bad_recipe_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str,
                                    value: Any, fragment: str) -> None:
    data = tiny_recipe(tmp_path)
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    path = write_recipe(tmp_path, data)
    code, out, err = run_cli(capsys, str(path), "--dry-run")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}: ")
    assert fragment in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"name: [unclosed\n", "invalid YAML at line"),
    (b"!!python/object/apply:os.system ['echo hacked']\n", "YAML tag refused"),
    (b"- just\n- a list\n", "expected a mapping"),
    (b"name: x\ndata: {name: digits}\nmodel: {name: gap_1p5k_dw}\nbudget: {flops: 1e9}\n\xff\xfe", "not UTF-8"),
    (b"", "expected a mapping"),
])
def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, str(path))
    assert code == 2 and fragment in err and err.count("\n") == 1, err


def test_missing_file_and_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, str(tmp_path / "nope.yaml"))
    assert code == 2 and "file not found" in err
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = run_cli(capsys, str(path), "optimizer.lr")
    assert code == 2 and "key.path=value" in err
    code, _, err = run_cli(capsys, str(path), "optimizer.lrr=0.1")
    assert code == 2 and "optimizer.lrr: unknown key; valid keys (closest first): lr" in err


def test_budget_smaller_than_one_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 10}))
    code, _, err = run_cli(capsys, str(path), "--dry-run")
    assert code == 2 and "budget.flops: the cap affords no training batch" in err


def test_yaml_python_tag_never_executes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = run_cli(capsys, str(path))
    assert code == 2 and not marker.exists()


def test_list_registries(capsys: pytest.CaptureFixture[str]) -> None:
    for kind, expect in (("algorithms", "squeeze_excite"), ("models", "gap_143k_dw"), ("datasets", "fashion_mnist")):
        code, out, _ = run_cli(capsys, "--list", kind)
        assert code == 0 and expect in out
    code, out, _ = run_cli(capsys, "--list", "models", "--pattern", "gap_5k*")
    assert "gap_5k_dw" in out and "gap_25k" not in out


def test_resolved_recipe_roundtrips(tmp_path: Path) -> None:
    from effrecipes.recipe import recipe_to_yaml, validate_recipe
    r = load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path)))
    again = validate_recipe(yaml.safe_load(recipe_to_yaml(r)))
    assert again == r


def test_builder_kwargs_check_names_missing_and_unknown() -> None:
    from effrecipes.recipe import check_builder_kwargs

    def builder(in_channels: int, num_classes: int, image_size: int, *, width: int,
                depth: int = 2) -> None: ...

    check_builder_kwargs(builder, {"width": 3}, field="model.kwargs", file="r.yaml",
                         fixed=("in_channels", "num_classes", "image_size"))
    with pytest.raises(RecipeError, match=r"r.yaml: model.kwargs.width: required argument 'width'"):
        check_builder_kwargs(builder, {}, field="model.kwargs", file="r.yaml",
                             fixed=("in_channels", "num_classes", "image_size"))
    with pytest.raises(RecipeError, match=r"model.kwargs.dpth: unknown argument 'dpth' \(accepted: depth"):
        check_builder_kwargs(builder, {"width": 1, "dpth": 3}, field="model.kwargs", file="r.yaml",
                             fixed=("in_channels", "num_classes", "image_size"))


def test_every_registered_algorithm_has_an_argument_spec_matching_its_constructor() -> None:
    """effrecipes/algorithm_args.py is the one place algorithm arguments are typed: one spec per
    registered algorithm, with exactly the constructor's arguments and defaults."""
    import inspect

    from effrecipes import algorithm_args, registry

    names = registry.algorithms.names()
    assert len(names) == 23 and sorted(algorithm_args.ARGS) == names
    for name in names:
        params = inspect.signature(registry.algorithms.get(name).__init__).parameters
        ctor = {k: p.default for k, p in params.items()
                if k not in ("self", "args", "kwargs", "input_key", "target_key")}
        spec = algorithm_args.ARGS[name].model_fields
        assert list(spec) == list(ctor), name
        for key, default in ctor.items():
            if default is not inspect.Parameter.empty:
                assert spec[key].default == default, (name, key)
            else:
                assert spec[key].is_required(), (name, key)
        algorithm_args.check_args(name, {k: v.default for k, v in spec.items() if not v.is_required()}
                                  if name not in ("gradient_clipping", "stochastic_depth") else
                                  {"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0},
                                   "stochastic_depth": {"target_layer_name": "ResNetBottleneck"}}[name])


def test_recipe_loader_yaml12_floats_duplicates_and_depth() -> None:
    from effrecipes.recipe import RecipeYAMLError, load_yaml_text

    data = load_yaml_text("a: 1e-1\nb: 5e-4\nc: -2E3\nd: .5\ne: 10\nf: 1_000\ng: 0x10\nh: '1e-1'\ni: 1.0e+3\n")
    assert data == {"a": 0.1, "b": 5e-4, "c": -2000.0, "d": 0.5, "e": 10, "f": 1000, "g": 16,
                    "h": "1e-1", "i": 1000.0}
    assert parse_override("optimizer.weight_decay=5e-4") == (["optimizer", "weight_decay"], 5e-4)
    with pytest.raises(RecipeYAMLError, match="duplicate key 'a' \\(first at line 1\\)"):
        load_yaml_text("a: 1\nb: 2\na: 3\n")
    with pytest.raises(RecipeYAMLError, match="nested deeper than 50 levels"):
        load_yaml_text("[" * 51 + "]" * 51)
    assert load_yaml_text("[" * 50 + "]" * 50)


def test_numeric_strings_still_read_for_float_fields_but_nothing_else(tmp_path: Path) -> None:
    """Strict types with one allowance: a float field reads '1e-3' (older grids quote numbers)."""
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"optimizer.lr": "1e-3"}))
    assert load_recipe(path).optimizer.lr == 1e-3
    for key, value in (("data.batch_size", "16"), ("data.batch_size", 16.0), ("seed", True),
                       ("optimizer.lr", "inf"), ("data.download", "yes")):
        with pytest.raises(RecipeError):
            load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path, **{key: value})))


@pytest.mark.parametrize("optimizer,fragment", [
    ({"name": "sgd", "momentum": 0.95}, "optimizer.momentum: momentum=0.95 is ignored by scheduler one_cycle"),
    ({"name": "sgd", "momentum": 0.0}, "optimizer.momentum: momentum=0.0 is ignored by scheduler one_cycle"),
    ({"name": "adamw", "betas": [0.8, 0.999]}, "optimizer.betas: betas[0]=0.8 is ignored by scheduler one_cycle"),
])
def test_one_cycle_refuses_a_momentum_it_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    optimizer: dict[str, Any], fragment: str) -> None:
    """torch's one-cycle sets SGD's momentum (Adam's beta1) itself, so a recipe asking for another
    would train bit for bit like the default (round 15 of docs/results.md did): refused in one line."""
    data = tiny_recipe(tmp_path)
    data["scheduler"] = {"name": "one_cycle"}
    data["optimizer"] = {**data.get("optimizer", {}), **optimizer}
    path = write_recipe(tmp_path, data)
    code, _, err = run_cli(capsys, str(path), "--dry-run")
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    # the same momentum under a schedule that keeps it, or one_cycle with the default, is fine
    for scheduler, opt in (({"name": "cosine"}, optimizer), ({"name": "one_cycle"}, {"name": optimizer["name"]})):
        data["scheduler"], data["optimizer"] = scheduler, {**opt, "lr": 0.1}
        load_recipe(write_recipe(tmp_path, data))


def _momenta(optimizer: dict[str, Any], scheduler: dict[str, Any], steps: int = 10) -> list[float]:
    """SGD's momentum on each of `steps` steps of a schedule built the way a run builds it."""
    import torch

    from effrecipes.optim import build_optimizer, build_scheduler
    from effrecipes.recipe import OptimizerConfig, SchedulerConfig

    opt_cfg = OptimizerConfig(name="sgd", lr=0.1, **optimizer)
    opt = build_optimizer(opt_cfg, [torch.nn.Parameter(torch.zeros(2))])
    (sched,), _ = build_scheduler(SchedulerConfig(**scheduler), opt_cfg, opt, lambda: steps, 5)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return out


def test_one_cycle_overwrites_the_optimizers_momentum() -> None:
    """Why the check above exists: with effrecipes' one-cycle, two SGD momenta give the same
    momentum on every step. If torch ever stopped cycling it, this fails and the check must go."""
    seen = [_momenta({"momentum": m}, {"name": "one_cycle"}) for m in (0.5, 0.9)]
    assert seen[0] == seen[1] and max(seen[0]) == 0.95 and min(seen[0]) < 0.86


def test_one_cycle_momentum_fields_train_what_they_say() -> None:
    """scheduler.base_momentum / max_momentum set the cycle; cycle_momentum: false keeps the
    optimizer's own momentum on every step."""
    kept = _momenta({"momentum": 0.5}, {"name": "one_cycle", "cycle_momentum": False})
    assert kept == [0.5] * 10
    cycled = _momenta({}, {"name": "one_cycle", "base_momentum": 0.7, "max_momentum": 0.8})
    assert cycled[0] == 0.8 and abs(min(cycled) - 0.7) < 0.02


@pytest.mark.parametrize("scheduler,optimizer,fragment", [
    ({"name": "cosine", "base_momentum": 0.8}, {}, "scheduler.base_momentum: base_momentum is used by scheduler one_cycle only"),
    ({"name": "cosine", "cycle_momentum": False}, {}, "scheduler.cycle_momentum: cycle_momentum is used by scheduler one_cycle only"),
    ({"name": "one_cycle", "cycle_momentum": False, "max_momentum": 0.9}, {},
     "scheduler: base_momentum and max_momentum are not used with cycle_momentum: false"),
    ({"name": "one_cycle", "max_momentum": 0.9}, {"momentum": 0.8},
     "momentum=0.8 is ignored by scheduler one_cycle, which sets it itself on every step (0.9 -> 0.85 -> 0.9)"),
])
def test_momentum_fields_that_change_nothing_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         scheduler: dict[str, Any], optimizer: dict[str, Any],
                                                         fragment: str) -> None:
    data = tiny_recipe(tmp_path)
    data["scheduler"] = scheduler
    data["optimizer"] = {**data.get("optimizer", {}), "name": "sgd", **optimizer}
    code, _, err = run_cli(capsys, str(write_recipe(tmp_path, data)), "--dry-run")
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    # cycle_momentum: false is how a recipe keeps its own momentum under one_cycle
    data["scheduler"], data["optimizer"]["momentum"] = {"name": "one_cycle", "cycle_momentum": False}, 0.8
    load_recipe(write_recipe(tmp_path, data))
