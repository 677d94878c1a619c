"""LoRAModule: any Hugging Face causal LM wrapped with PEFT LoRA, trained to answer letter-position questions."""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, restricted_number_type
from peft import LoraConfig, PeftModel, get_peft_model

from lit_tuning.train import warm
from lit_tuning.train.base_model import resolve_model_path
from lit_tuning.train.metrics import answer_accuracy_counts
from lit_tuning.train.problems import ArgumentProblem
from lit_tuning.train.schedules import Schedule, lr_multiplier

Dropout = restricted_number_type("Dropout", float, [(">=", 0), ("<", 1)], join="and")
TorchDtype = Literal["auto", "float32", "bfloat16", "float16"]


class LoRAModule(pl.LightningModule):
    """A causal LM with LoRA adapters, scored on the answer token of spelling questions."""

    def __init__(
        self,
        model_name_or_path: str = "embedded:tiny",
        lora_r: PositiveInt = 16,
        lora_alpha: PositiveFloat = 32.0,
        use_rslora: bool = False,
        lora_dropout: Dropout = 0.05,
        target_modules: list[str] | Literal["all-linear"] = "all-linear",
        learning_rate: PositiveFloat = 2e-3,
        weight_decay: NonNegativeFloat = 0.0,
        warmup_steps: NonNegativeInt = 50,
        lr_schedule: Schedule = "cosine",
        torch_dtype: TorchDtype = "float32",
        adapter_path: str | None = None,
    ) -> None:
        """Load the base model and add LoRA adapters.

        Args:
            model_name_or_path: ``embedded:tiny`` (built offline), a save_pretrained directory, or a hub id.
            lora_r: rank of the LoRA update matrices.
            lora_alpha: LoRA scaling numerator; the update is scaled by alpha / r.
            use_rslora: scale the update by alpha / sqrt(r) instead (rank-stabilized LoRA, Kalajdzievski 2023), so
                a good learning rate and alpha carry over between ranks.
            lora_dropout: dropout on the LoRA input, in [0, 1).
            target_modules: names of the linear layers to adapt, or ``all-linear``.
            learning_rate: peak AdamW learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: optimizer steps of linear warmup from 0 to the peak learning rate.
            lr_schedule: decay after warmup: constant, linear to 0, or cosine to 0.
            torch_dtype: dtype of the base weights (bfloat16 halves GPU memory of a real model).
            adapter_path: a saved PEFT adapter to start from (e.g. a finished run's ``adapter/``).
        """
        check_module_arguments(
            lora_alpha=lora_alpha,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            target_modules=target_modules,
            adapter_path=adapter_path,
        )
        super().__init__()
        self.save_hyperparameters()
        # Checkpoints hold only the trainable (adapter) weights; the frozen base is reloaded from its source.
        self.strict_loading = False
        self.tokens_seen = 0  # prompt tokens trained on, kept in checkpoints so a resumed run keeps counting
        self.model = build_lora_model(model_name_or_path, torch_dtype, adapter_path, lora_r, lora_alpha, use_rslora,
                                      lora_dropout, target_modules)  # fmt: skip
        self._step_started = 0.0
        self._val_correct = self._val_total = 0

    def trainable_parameters(self) -> tuple[int, int]:
        """Return (trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.model.parameters())

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the next-token logits at the end of each prompt, shape (batch, vocab).

        Lean: the backbone's hidden states are gathered at each prompt's last token and only those go through
        the LM head, instead of vocabulary-wide logits at every position (most of the logits memory and a large
        share of the FLOPs of a real model's 50k-150k vocabulary) of which one row per question is used.
        """
        rows = torch.arange(batch["input_ids"].size(0), device=batch["input_ids"].device)
        causal_lm = self.model.get_base_model()
        if not supports_lean_logits(causal_lm):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return logits[rows, batch["last_index"]].float()
        outputs = causal_lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = outputs.last_hidden_state[rows, batch["last_index"]]
        return causal_lm.get_output_embeddings()(hidden).float()

    def on_fit_start(self) -> None:
        """Log the parameter counts and the reference baselines once per run."""
        trainable, total = self.trainable_parameters()
        summary = {"model/trainable_params": float(trainable), "model/total_params": float(total)}
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "baselines"):
            summary.update(datamodule.baselines("val"))
        for logger in self.loggers:
            logger.log_metrics(summary, step=0)

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Start the throughput clock."""
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on the answer token only."""
        loss = F.cross_entropy(self.answer_logits(batch), batch["answer_ids"])
        batch_size = batch["answer_ids"].numel()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log throughput and the current learning rate."""
        elapsed = time.perf_counter() - self._step_started
        tokens = float(batch["attention_mask"].sum())
        self.tokens_seen += int(tokens)
        self.log("train/tokens_per_second", tokens / max(elapsed, 1e-9), batch_size=1)
        self.log("train/tokens_seen", float(self.tokens_seen), batch_size=1, reduce_fx="max")
        self.log("train/learning_rate", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)

    def _evaluation_step(self, batch: dict[str, torch.Tensor], prefix: str) -> None:
        logits = self.answer_logits(batch)
        loss = F.cross_entropy(logits, batch["answer_ids"])
        correct, total = answer_accuracy_counts(logits, batch["answer_ids"])
        self.log(f"{prefix}/loss", loss, batch_size=total, sync_dist=True)
        # Logged as a batch-size-weighted mean, so the epoch value is exact accuracy over all questions.
        self.log(
            f"{prefix}/letter_position_accuracy",
            correct / total,
            batch_size=total,
            sync_dist=True,
            prog_bar=prefix == "val",
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss and letter accuracy on held-out words."""
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss and letter accuracy on the test words."""
        self._evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        """Log peak memory alongside each validation."""
        self.log("system/peak_memory_mb", peak_memory_mb(self.device), batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the adapter weights with warmup and the configured decay, stepped every optimizer step."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = lr_multiplier(self.hparams.lr_schedule, self.hparams.warmup_steps, total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights: a LoRA checkpoint must not carry a copy of the frozen base model."""
        trainable = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Continue the token count of a resumed run."""
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))

    def save_adapter(self, directory: Path) -> None:
        """Save the PEFT adapter with save_pretrained."""
        self.model.save_pretrained(directory)


def supports_lean_logits(causal_lm: torch.nn.Module) -> bool:
    """Tell whether logits equal the LM head applied to the backbone's last hidden state (no scaling or capping)."""
    config = getattr(causal_lm, "config", None)
    # Models that scale or soft-cap logits after the head (Cohere, Gemma 2) keep the full forward pass.
    reshaped = any(getattr(config, key, None) for key in ("logit_scale", "final_logit_softcapping"))
    has_backbone = getattr(causal_lm, "base_model", causal_lm) is not causal_lm
    return has_backbone and causal_lm.get_output_embeddings() is not None and not reshaped


def check_module_arguments(
    *,
    lora_alpha: float,
    learning_rate: float,
    weight_decay: float,
    target_modules: list[str] | str,
    adapter_path: str | None,
) -> None:
    """Refuse LoRAModule arguments that pass their types but cannot train, naming the model.* key."""
    # The types accept inf (it is > 0) and an empty list; an infinite learning rate trains NaNs and "succeeds".
    for key, value in (("lora_alpha", lora_alpha), ("learning_rate", learning_rate), ("weight_decay", weight_decay)):
        if not math.isfinite(value):
            raise ArgumentProblem(f"model.{key}", f"{value}; allowed: a finite number")
    if isinstance(target_modules, list) and not target_modules:
        raise ArgumentProblem("model.target_modules", "[]; allowed: a non-empty list of module names, or all-linear")
    if adapter_path is not None and not (Path(adapter_path).expanduser() / "adapter_config.json").is_file():
        raise ArgumentProblem(
            "model.adapter_path",
            f"{adapter_path!r} holds no adapter_config.json; allowed: a saved PEFT adapter directory "
            "(a finished run's adapter/) or null",
        )


def build_lora_model(
    model_name_or_path: str,
    torch_dtype: TorchDtype,
    adapter_path: str | None,
    lora_r: int,
    lora_alpha: float,
    use_rslora: bool,
    lora_dropout: float,
    target_modules: list[str] | str,
) -> PeftModel:
    """Load the base model (kept warm across trials in one process) and wrap it with a new or a saved adapter."""
    base = warm.load_base_model(
        resolve_model_path(model_name_or_path), None if torch_dtype == "auto" else getattr(torch, torch_dtype)
    )
    if adapter_path is not None:
        model = PeftModel.from_pretrained(base, adapter_path, is_trainable=True)
    else:
        lora = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, use_rslora=use_rslora, lora_dropout=lora_dropout,
            target_modules=target_modules, task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(base, lora)
    warm.adopt(model)
    # from_pretrained returns eval mode; train the whole model in train mode, as Hugging Face's Trainer does
    # (Lightning keeps a module's mode, and warns about modules left in eval mode at the start of fit).
    return model.train()


def peak_memory_mb(device: torch.device) -> float:
    """Return peak CUDA memory allocated on the device, or the process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
