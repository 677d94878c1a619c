"""`python -m lit_tuning.experiment --mode single|grid|sweep`: write experiment configs or a W&B sweep config."""

from lit_tuning.experiment.generator import main

if __name__ == "__main__":
    raise SystemExit(main())
