"""LoRAModule: LoRA on any causal LM, loss goes down, adapters and checkpoints round-trip."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from lit_tuning.train.data import SpellingDataModule
from lit_tuning.train.metrics import answer_accuracy_counts
from lit_tuning.train.module import LoRAModule, supports_lean_logits
from lit_tuning.train.schedules import lr_multiplier


def quick_trainer(root: Path, steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=2,
    )


def val_loss(trainer: pl.Trainer, module: LoRAModule, data: SpellingDataModule) -> float:
    return trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]


def train_and_measure(model_ref: str, root: Path, steps: int = 40, **module_kwargs) -> tuple[float, float]:
    """Return validation loss before and after a short LoRA fine-tune."""
    pl.seed_everything(0)
    module = LoRAModule(model_name_or_path=model_ref, warmup_steps=0, **module_kwargs)
    data = SpellingDataModule(model_name_or_path=model_ref, num_words=300, batch_size=32)
    before = val_loss(quick_trainer(root, steps), module, data)
    trainer = quick_trainer(root, steps)
    trainer.fit(module, datamodule=data)
    return before, val_loss(trainer, module, data)


def test_only_lora_weights_train(micro_model_dir: Path):
    module = LoRAModule(model_name_or_path="embedded:micro", lora_r=4)
    trainable = [name for name, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # all-linear on a 2-layer Llama: q,k,v,o,gate,up,down per layer, A and B each
    assert len(trainable) == 2 * 7 * 2
    n_trainable, n_total = module.trainable_parameters()
    assert 0 < n_trainable < n_total / 2


def test_a_few_lora_steps_lower_the_loss(micro_model_dir: Path, tmp_path: Path):
    before, after = train_and_measure("embedded:micro", tmp_path, learning_rate=5e-3)
    assert after < before - 0.2


def _save_random_model(model, micro_model_dir: Path, out: Path) -> str:
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(micro_model_dir).save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("architecture", ["gpt2", "qwen2"])
def test_non_llama_models_train_too(architecture: str, micro_model_dir: Path, tmp_path: Path):
    vocab = len(AutoTokenizer.from_pretrained(micro_model_dir))
    torch.manual_seed(0)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, initializer_range=0.3)
        )
    else:
        config = Qwen2Config(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.3,
        )  # fmt: skip
        model = Qwen2ForCausalLM(config)
    path = _save_random_model(model, micro_model_dir, tmp_path / architecture)
    # Random weights with a wide init give logits large enough for low-rank updates to move within a few steps.
    before, after = train_and_measure(path, tmp_path, steps=40, learning_rate=1e-2)
    assert after < before - 1.0


def test_saved_adapter_reloads_to_identical_predictions(micro_model_dir: Path, tmp_path: Path):
    pl.seed_everything(0)
    module = LoRAModule(model_name_or_path="embedded:micro", learning_rate=5e-3, warmup_steps=0)
    data = SpellingDataModule(model_name_or_path="embedded:micro", num_words=300)
    quick_trainer(tmp_path, 10).fit(module, datamodule=data)
    module.save_adapter(tmp_path / "adapter")
    reloaded = LoRAModule(model_name_or_path="embedded:micro", adapter_path=str(tmp_path / "adapter"))
    fresh = LoRAModule(model_name_or_path="embedded:micro")
    batch = next(iter(data.val_dataloader()))
    module.eval(), reloaded.eval(), fresh.eval()
    with torch.no_grad():
        trained_logits = module.answer_logits(batch)
        assert torch.allclose(trained_logits, reloaded.answer_logits(batch), atol=1e-5)
        assert not torch.allclose(trained_logits, fresh.answer_logits(batch), atol=1e-3)


@pytest.mark.parametrize(
    ("schedule", "floor", "expected"),
    [
        ("constant", 0.0, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", 0.0, [0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),
        ("cosine", 0.0, [0.5, 1.0, 0.853553, 0.5, 0.146447, 0.0, 0.0]),
        ("cosine", 0.1, [0.5, 1.0, 0.868198, 0.55, 0.231802, 0.1, 0.1]),  # base-model pretraining's floor
    ],
)
def test_lr_schedule_warms_up_then_decays_to_its_floor(schedule: str, floor: float, expected: list[float]):
    multiplier = lr_multiplier(schedule, warmup_steps=1, total_steps=5, floor=floor)
    assert [round(multiplier(step), 6) for step in range(7)] == expected


def full_answer_logits(module: LoRAModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference computation: vocabulary-wide logits at every position, then the prompt's last row."""
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[torch.arange(logits.size(0)), batch["last_index"]].float()


def test_lean_step_gives_the_full_computations_loss_accuracy_and_gradients(micro_model_dir: Path):
    pl.seed_everything(0)
    module = LoRAModule(model_name_or_path="embedded:micro", lora_dropout=0.0)
    torch.nn.init.normal_(module.model.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight)
    data = SpellingDataModule(model_name_or_path="embedded:micro", num_words=300, eval_batch_size=64)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert supports_lean_logits(module.model.get_base_model())
    results = []
    for compute in (module.answer_logits, lambda b: full_answer_logits(module, b)):
        module.zero_grad()
        logits = compute(batch)
        loss = torch.nn.functional.cross_entropy(logits, batch["answer_ids"])
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.requires_grad])
        results.append((logits.detach(), loss.item(), answer_accuracy_counts(logits, batch["answer_ids"]), grads))
    (lean, lean_loss, lean_counts, lean_grads), (full, full_loss, full_counts, full_grads) = results
    assert lean.shape == (64, full.shape[1])
    assert torch.allclose(lean, full, atol=1e-5)
    assert lean_loss == pytest.approx(full_loss, abs=1e-6) and lean_counts == full_counts
    assert torch.allclose(lean_grads, full_grads, atol=1e-6) and lean_grads.abs().sum() > 0


def test_models_that_rescale_logits_keep_the_full_computation(micro_model_dir: Path):
    module = LoRAModule(model_name_or_path="embedded:micro")
    causal_lm = module.model.get_base_model()
    causal_lm.config.final_logit_softcapping = 30.0
    assert not supports_lean_logits(causal_lm)


@pytest.mark.parametrize("rank", [4, 16])
def test_rslora_scales_the_update_by_alpha_over_sqrt_rank_instead_of_alpha_over_rank(micro_model_dir: Path, rank: int):
    """The same adapter weights move a layer's output sqrt(r) times as far with rsLoRA as with plain LoRA."""
    updates = []
    for use_rslora in (False, True):
        torch.manual_seed(0)
        module = LoRAModule("embedded:micro", lora_r=rank, lora_alpha=8.0, use_rslora=use_rslora, lora_dropout=0.0)
        layer = module.model.base_model.model.model.layers[0].mlp.down_proj
        torch.manual_seed(1)
        torch.nn.init.normal_(layer.lora_B.default.weight)
        x = torch.randn(3, layer.in_features)
        with torch.no_grad():
            updates.append(layer(x) - layer.base_layer(x))
    assert updates[0].abs().max() > 0
    torch.testing.assert_close(updates[1], updates[0] * rank**0.5)
    saved = module.hparams
    assert saved["use_rslora"] is True and module.model.peft_config["default"].use_rslora
