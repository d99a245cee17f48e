"""The output JSON schema as a llama.cpp grammar, checked lazily.

llama-cpp-python's own grammar sampler tests every token of the vocabulary at every step: with Gemma's 262k
tokens that costs ~130 ms a token on two cores, four times the model itself. Like llama.cpp's common sampler,
`GrammarGate` first checks only the model's favourite token, then the top 64, and scans the whole vocabulary
only when the grammar rejects all of those.
"""

from __future__ import annotations

import ctypes
import json

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import json_schema_to_gbnf

from model.schema import output_json_schema

_NEAR_TOP = 64
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
# JSON strings can't hold raw control characters; the converter's string rule lets them through.
_LOOSE_CHAR = 'char ::= [^"\\\\]'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F]'


def output_grammar() -> str:
    return json_schema_to_gbnf(json.dumps(output_json_schema())).replace(_LOOSE_CHAR, _JSON_CHAR)


class GrammarGate:
    """Grammar state for one generation: `choose` the best allowed token, then `accept` the one emitted."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, gbnf: str) -> None:
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not self._sampler:
            raise ValueError("llama.cpp rejected the output grammar")

    def allowed(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Boolean mask over `ids`: which tokens the grammar accepts next."""
        data = np.zeros(len(ids), dtype=_TOKEN_DATA)
        data["id"] = ids
        data["logit"] = logits[ids]
        candidates = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(ids), selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(candidates))
        return np.isfinite(data["logit"])

    def choose(self, logits: np.ndarray) -> int:
        """The highest-scoring token the grammar allows. Widening circles: the favourite, the top few, all. Each
        is exact: a token allowed in a circle outscores every token outside it."""
        circles = (
            np.array([np.argmax(logits)]),
            np.argpartition(logits, -_NEAR_TOP)[-_NEAR_TOP:],
            np.arange(len(logits)),
        )
        for ids in circles:
            allowed = ids[self.allowed(ids, logits)]
            if len(allowed):
                return int(allowed[np.argmax(logits[allowed])])
        raise RuntimeError("the output grammar allows no next token")

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None
