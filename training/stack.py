"""Whether training can run: the training extras installed (checked before anything imports them, so that a
daemon or CLI installed without `sentimon[train]` says what to install instead of failing on an import deep inside
training), and a model that adapters can be trained for."""

from __future__ import annotations

from importlib.util import find_spec

from model.settings import ModelSettings

TRAINING_PACKAGES = ("torch", "transformers", "peft", "accelerate", "gguf")
INSTALL_HINT = (
    "pip install 'sentimon[train]' (on a CPU-only Linux box first "
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
)


def training_stack_problem() -> str | None:
    """What is missing for training, and how to install it; None when training can run."""
    missing = [name for name in TRAINING_PACKAGES if find_spec(name) is None]
    return f"training needs {', '.join(missing)}, not installed: {INSTALL_HINT}" if missing else None


def untrainable_model(settings: ModelSettings) -> str | None:
    """Why adapters can't be trained for this model, or None: they are trained on, and exported for, a GGUF base."""
    if settings.gguf_model:
        return None
    return (f'training starts from a GGUF base model, and model.model {settings.model!r} (backend '
            f'"{settings.backend}") is not one: use the embedded model or a .gguf file')  # fmt: skip
