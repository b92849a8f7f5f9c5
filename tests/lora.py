"""A real LoRA adapter for the demo model, made with peft: no adapter for SmolLM2-135M is
published, and a test of per-job adapters needs one that really changes the answers."""

from __future__ import annotations

from pathlib import Path

RANK = 8
TARGETS = ["q_proj", "v_proj"]


def make_adapter(base_model: Path, out: Path, seed: int = 0, scale: float = 0.1) -> Path:
    """Save a rank-8 adapter on the attention's q and v projections to `out`.

    peft starts B at zero (an adapter that changes nothing until trained) and A from torch's
    unseeded generator; here both are drawn from one seeded normal instead, so the adapter is
    the same on every run and moves every one of the test's greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS,
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:  # peft's own scale for A: 1 / sqrt(fan in)
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            elif "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(str(out))
    return out
