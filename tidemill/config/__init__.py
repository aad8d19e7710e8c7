"""Pipelines as config: the TOML file that declares sources, schema, model and cadence:
fields.py (what the models are made of), sources.py, models.py, pipeline.py, load.py."""
