"""Recipes (Cai et al. 2022 compose methods into pipelines): YAML steps -> runner -> report.

``run_recipe("recipe.yaml", "out/")`` applies the recipe's steps in order: any registered
method (train, distill, prune, channel_prune, factorize, ptq, qat, kmeans, ...; see
``mobiledl.core.methods``) and the pipeline steps encode, export and benchmark. It records a
``Measurement`` after each, checkpoints after each and can resume; ``mobiledl run`` wraps it.
"""

from mobiledl.pipeline.recipe import Recipe, load_recipe, parse_recipe, step_kinds
from mobiledl.pipeline.runner import run_recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run_recipe", "step_kinds"]
