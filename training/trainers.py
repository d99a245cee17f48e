"""Which LoRA trainer a refresh runs (`training.trainer`): mlx-lm on Apple Silicon, torch + peft elsewhere.

Both start from the same base (the GGUF's cached Hugging Face conversion), take the same examples and settings,
and leave a peft adapter that training/export.py writes for llama.cpp.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from monitor.config import Trainer
from training.convert import hf_base_dir
from training.lora import TrainingError, TrainResult, TrainSettings, train_lora
from training.packing import TrainingExample


def pick_trainer(choice: Trainer) -> Literal["torch", "mlx"]:
    has_mlx = find_spec("mlx_lm") is not None
    if choice == "auto":
        return "mlx" if has_mlx and sys.platform == "darwin" and platform.machine() == "arm64" else "torch"
    if choice == "mlx" and not has_mlx:
        raise TrainingError('training.trainer = "mlx" needs mlx-lm: pip install "sentimon[mlx]" on Apple Silicon')
    return choice


def run_trainer(
    choice: Trainer, examples: Sequence[TrainingExample], *, base_gguf: Path, out_dir: Path, settings: TrainSettings,
    progress: bool,
) -> TrainResult:  # fmt: skip
    if pick_trainer(choice) == "mlx":
        from training.mlx_backend import train_lora_mlx

        model_path = hf_base_dir(base_gguf, progress=progress)
        return train_lora_mlx(examples, model_path=model_path, out_dir=out_dir, settings=settings, progress=progress)
    return train_lora(examples, base_gguf=base_gguf, out_dir=out_dir, settings=settings, progress=progress)
