"""`python -m lit_tuning fit|validate|test --config configs/base.yaml`: the LightningCLI entry point."""

from lit_tuning.train.cli import cli_main

if __name__ == "__main__":
    cli_main()
