"""Recipes: one YAML file describing a whole preparation — sources, mix, eval split, dedup and convert options.

`dsprep.recipe.load.load_recipe` reads and validates a recipe file (`dsprep.recipe.model`; errors name
``file:line``), `dsprep.recipe.run.run_recipe` runs it into train/eval shard sets, and
`dsprep.recipe.model.recipe_json_schema` is its JSON Schema for editors. The package imports nothing on its own, so
the command line stays quick to start.
"""
