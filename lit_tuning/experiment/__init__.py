"""Experiment configs and search spaces: composed and checked with fit's own parser, mapped onto Optuna."""
