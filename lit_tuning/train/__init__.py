"""One LoRA fine-tuning run: the LightningCLI, the LoRA module, the spelling data and the embedded base model."""
