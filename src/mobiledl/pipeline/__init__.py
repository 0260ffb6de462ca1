"""Recipes (Cai et al. 2022 compose methods into pipelines): YAML steps -> runner -> report.

``run_recipe("recipe.yaml", "out/")`` applies the recipe's steps (train, prune, factorize,
quantize, kmeans, encode, finetune with or without distillation, export, benchmark) in
order, records a ``Measurement`` after each, checkpoints after each and can resume; the
``mobiledl run`` command wraps it.
"""

from mobiledl.pipeline.recipe import STEP_KINDS, Recipe, load_recipe, parse_recipe
from mobiledl.pipeline.runner import run_recipe

__all__ = ["STEP_KINDS", "Recipe", "load_recipe", "parse_recipe", "run_recipe"]
