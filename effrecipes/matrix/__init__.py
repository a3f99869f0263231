"""Ablation matrices: technique combinations x a grid of recipe settings x seeds.

    spec (YAML) --load_matrix--> Matrix of Cells (resolved, validated Recipes, content hashes)
                --run_matrix-->  <output>/<name>/cells/<id>/<id>/ run dirs (effrecipes.runner)
                --write_results--> results.{csv,json,md} (mean +/- std over seeds, delta vs baseline)

The console script is `composer-ablate` (`effrecipes.matrix.cli`).
"""
from effrecipes.matrix.cells import (Cell, Matrix, MatrixSpecError, check_valid, expand,
                                     expand_combos, load_matrix, recipe_hash)
from effrecipes.matrix.execute import run_cell, run_matrix
from effrecipes.matrix.results import write_results
from effrecipes.matrix.spec import MatrixSpec, load_spec, validate_spec

__all__ = ["Cell", "Matrix", "MatrixSpec", "MatrixSpecError", "check_valid", "expand",
           "expand_combos", "load_matrix", "load_spec", "recipe_hash", "run_cell", "run_matrix",
           "validate_spec", "write_results"]
