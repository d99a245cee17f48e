"""Settings of the model stage: the `[model]` table of the sentimon config file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EMBEDDED = "embedded"


class OpenAISettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        "http://127.0.0.1:8080/v1",
        description="Base URL of an OpenAI-compatible server (llama-server, vLLM, Ollama), up to and including /v1.",
    )
    model: str = Field("default", description="Model name sent with each request (the server decides what it means).")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key; no key is sent when it is unset."
    )
    concurrency: int = Field(4, ge=1, description="Requests in flight at once, across all threads using this backend.")
    timeout_seconds: float = Field(60.0, gt=0, description="Time allowed for one request, connection included.")
    max_retries: int = Field(
        3, ge=0, description="Retries after HTTP 429/5xx or a connection error, with exponential backoff."
    )


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["llama_cpp", "mlx", "openai"] = Field(
        "llama_cpp",
        description="Inference backend: llama_cpp (GGUF on CPU), mlx (Apple Silicon), openai (an HTTP server).",
    )
    model: str = Field(
        EMBEDDED,
        description=(
            'Model to run: "embedded" (the bundled Gemma 3 270M GGUF), a GGUF file path, a Hugging Face repo id '
            '("org/name" or "org/name/file.gguf"); for mlx also an MLX model directory or repo id (a GGUF runs in mlx '
            "from its one-time Hugging Face conversion, the one training uses)."
        ),
    )
    adapter: str | None = Field(
        None,
        description=(
            "LoRA adapter to pin: a GGUF LoRA file (llama_cpp) or an mlx-lm adapter directory (mlx). Unset, a GGUF "
            "model follows the adapter registry's current one (`sentimon adapters list`): the shipped default "
            "adapter until training promotes another."
        ),
    )
    threads: int = Field(2, ge=1, description="CPU threads used for inference (llama_cpp).")
    context_tokens: int = Field(
        2048, ge=256, description="Context window in tokens: instructions + examples + article + output must fit."
    )
    max_input_tokens: int = Field(
        384, ge=32, description="Token budget for one article; longer ones keep headline, summary and lead paragraphs."
    )
    max_output_tokens: int = Field(
        512, ge=16, description="Most tokens the model may generate for one article (a dozen entities take ~260)."
    )
    seed: int = Field(0, description="Random seed (decoding is greedy, so it only matters to backends that sample).")
    grammar: bool = Field(
        True,
        description="Constrain llama_cpp decoding to the output JSON schema; turn off only to debug prompts.",
    )
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="Used when backend = \"openai\".")

    @property
    def gguf_model(self) -> bool:
        """Whether `model` names a GGUF file: the base that training and the adapter registry work on. For mlx only
        the embedded model and *.gguf paths do ("org/name" is an MLX repo there); openai's model is the server's."""
        if self.backend == "mlx":
            return self.model == EMBEDDED or self.model.endswith(".gguf")
        return self.backend == "llama_cpp"

    @model_validator(mode="after")
    def _fits_backend(self) -> ModelSettings:
        if self.backend == "openai" and self.adapter is not None:
            raise ValueError('backend "openai" cannot load adapter files: serve the adapter on the server instead')
        if self.max_input_tokens + self.max_output_tokens >= self.context_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) + max_output_tokens ({self.max_output_tokens}) "
                f"leave no room for the instructions in context_tokens ({self.context_tokens})"
            )
        return self
