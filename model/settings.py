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
            '("org/name" or "org/name/file.gguf"); for mlx, a local model directory or repo id.'
        ),
    )
    adapter: str | None = Field(
        None,
        description=(
            "LoRA adapter to pin: a GGUF LoRA file (llama_cpp) or an adapter directory (mlx). Unset, llama_cpp "
            "uses the adapter registry's current one (`sentimon adapters list`): the shipped default adapter until "
            "training promotes another."
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

    @model_validator(mode="after")
    def _fits_backend(self) -> ModelSettings:
        if self.backend == "mlx" and self.model == EMBEDDED:
            raise ValueError(
                'the embedded model is a GGUF file for backend "llama_cpp"; with backend "mlx" set model to an MLX '
                "model directory or Hugging Face repo id"
            )
        if self.backend == "openai" and self.adapter is not None:
            raise ValueError('backend "openai" cannot load adapter files: serve the adapter on the server instead')
        if self.max_input_tokens + self.max_output_tokens >= self.context_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) + max_output_tokens ({self.max_output_tokens}) "
                f"leave no room for the instructions in context_tokens ({self.context_tokens})"
            )
        return self
