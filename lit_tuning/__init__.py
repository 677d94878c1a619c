"""lit_tuning: hyperparameter tuning of LoRA fine-tuning runs, taught on letter spelling."""

__version__ = "0.1.0"
