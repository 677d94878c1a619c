"""The Optuna sweep driver: N worker processes share one study; each trial is a `fit` run with step-based pruning."""
