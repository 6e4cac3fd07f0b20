"""Request and response bodies. Request models are built per app from its limits, so the OpenAPI
schema states the real bounds (maxItems, maxLength) a client may send.

Response models describe the JSON for the schema and the docs; the inference routes write the
bytes themselves (see responses.py) because serialising floats is their hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)


def _encodable(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"), which are not text and which the tokenizer
    # cannot take: refuse them here as a client error instead of failing inside a batch.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text contains an unpaired surrogate (not valid Unicode)") from None
    return text


def _no_token_ids(value: Any) -> Any:
    """OpenAI also accepts token-id arrays; their ids belong to another tokenizer: refuse."""
    if isinstance(value, list) and value and not isinstance(value[0], str):
        first = value[0]
        if (isinstance(first, int) and not isinstance(first, bool)) or (
            isinstance(first, list) and first and isinstance(first[0], int)
        ):
            raise ValueError(
                "token-id input is not supported: this server tokenizes with its own model's "
                "tokenizer; send a string or a list of strings"
            )
    return value


class _Strict(BaseModel):
    """Request bodies: unknown fields are an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    """Response bodies (documentation and response filtering)."""


# ------------------------------------------------------------------ shared pieces
class Descriptor(_Out):
    """A padded batch shape, the key of the graph cache."""

    num_tokens: int
    num_reqs: int | None = None
    is_uniform_decode: bool = False


class FailedShape(_Out):
    descriptor: Descriptor
    reason: str


class Usage(_Out):
    tokens: int


class EmbeddingsUsage(_Out):
    prompt_tokens: int
    total_tokens: int


# ------------------------------------------------------------------ responses
class InferResponse(_Out):
    model: str
    dimensions: int
    embeddings: list[list[float]]
    usage: Usage


class EmbeddingItem(_Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="floats, or base64 of little-endian float32 when encoding_format=base64"
    )


class EmbeddingsResponse(_Out):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingsUsage


class ModelCard(_Out):
    """An OpenAI model object: the one model this server serves."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(_Out):
    status: Literal["ok"]


class PrewarmProgress(_Out):
    done: int
    total: int


class EmbeddingModelType(_Out):
    pooling: str


class ClassifierModelType(_Out):
    id2label: dict[str, str]
    label2id: dict[str, int]


class InfoModelType(_Out):
    """One of the three, as text-embeddings-inference names them."""

    embedding: EmbeddingModelType | None = None
    reranker: ClassifierModelType | None = None
    classifier: ClassifierModelType | None = None


class InfoResponse(_Out):
    """text-embeddings-inference's /info, plus what this server adds."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: InfoModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_client_batch_size: int
    tokenization_workers: int
    version: str
    family: str
    dimensions: int
    normalized: bool
    prompts: list[str]
    default_prompt_name: str | None
    device: str
    graph_mode: str


class ReadyResponse(_Out):
    status: Literal["ready"]
    model: str
    device: str
    dtype: str
    mode: str
    prewarm: PrewarmProgress


class PrewarmResponse(_Out):
    captured: list[Descriptor]
    skipped: list[Descriptor]
    failed: list[FailedShape]
    seconds: float


class CachedGraph(_Out):
    descriptor: Descriptor
    replay_count: int
    capture_seconds: float
    memory_bytes: int
    last_used: float = Field(description="Unix time (seconds) of the last replay or capture")


class GraphsResponse(_Out):
    mode: str
    max_cached_graphs: int
    memory_budget_bytes: int | None
    capture_threshold: int
    cached_graphs: int
    memory_bytes: int
    graphs: list[CachedGraph]


class HotShape(_Out):
    rank: int
    descriptor: Descriptor
    count: int
    captured: bool


class HotShapesResponse(_Out):
    hot_shapes: list[HotShape]


class StatsResponse(_Out):
    mode: str
    hits: int
    misses: int
    hit_rate: float
    captures: int
    replays: int
    evictions: int
    capture_failures: int
    eager_runs: int
    capture_seconds_total: float
    cached_graphs: int
    memory_bytes: int
    pending_captures: int = Field(description="Shapes waiting for an idle gap to be captured")
    startup_prewarm: PrewarmResponse = Field(
        description="What the start-up prewarm captured; the failed shapes are served eagerly"
    )
    queue_depth: int
    batches: int
    texts: int


class ClearResponse(_Out):
    cleared: int


# ------------------------------------------------------------------ requests (per app)
@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_documents: int
    max_text_chars: int
    max_batch_size: int
    max_seq_len: int
    max_prewarm_items: int = 256
    max_top_k: int = 1024
    max_num_tokens: int = 1 << 20


@dataclass(frozen=True)
class RequestModels:
    infer: type[BaseModel]
    embeddings: type[BaseModel]
    embed: type[BaseModel]
    rerank: type[BaseModel]
    tei_rerank: type[BaseModel]
    predict: type[BaseModel]
    prewarm: type[BaseModel]


PromptName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Dimensions = Annotated[StrictInt, Field(ge=1, le=1 << 16)]


def build_request_models(limits: Limits) -> RequestModels:
    Text = Annotated[
        str,
        StringConstraints(min_length=1, max_length=limits.max_text_chars),
        AfterValidator(_encodable),
    ]
    Texts = Annotated[list[Text], Field(min_length=1, max_length=limits.max_inputs)]

    class InferRequest(_Strict):
        """Texts to embed; answered in input order. `prompt_name`: one of the model's prompts
        (its default prompt applies when none is given)."""

        inputs: Texts
        prompt_name: PromptName | None = None

    class EmbeddingsRequest(_Strict):
        """The OpenAI embeddings request (`model` is accepted and ignored: one model is served)."""

        input: Annotated[Text | Texts, BeforeValidator(_no_token_ids)]
        model: Annotated[str, StringConstraints(max_length=256)] | None = None
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: Dimensions | None = None
        user: Annotated[str, StringConstraints(max_length=256)] | None = None
        prompt_name: PromptName | None = None

    class EmbedRequest(_Strict):
        """text-embeddings-inference's embed request. Inputs longer than the model's maximum
        are truncated, as a TEI server started with --auto-truncate does, unless `truncate` is
        false: then they are a 413."""

        inputs: Annotated[Text | Texts, BeforeValidator(_no_token_ids)]
        normalize: StrictBool = True
        truncate: StrictBool | None = None
        prompt_name: PromptName | None = None
        dimensions: Dimensions | None = None

    Documents = Annotated[list[Text], Field(min_length=1, max_length=limits.max_documents)]

    class RerankDocument(_Strict):
        text: Text

    class RerankRequest(_Strict):
        """Cohere's and Jina's rerank request. `model` is accepted and ignored (one model is
        served); documents are not chunked, so `max_chunks_per_doc` and `max_tokens_per_doc`
        change nothing (a document is truncated to the model's maximum); `priority` is
        accepted and ignored."""

        query: Text
        documents: Annotated[
            list[Text | RerankDocument], Field(min_length=1, max_length=limits.max_documents)
        ]
        model: Annotated[str, StringConstraints(max_length=256)] | None = None
        top_n: Annotated[StrictInt, Field(ge=1)] | None = None
        return_documents: StrictBool = False
        rank_fields: list[Literal["text"]] | None = None
        max_chunks_per_doc: Annotated[StrictInt, Field(ge=1)] | None = None
        max_tokens_per_doc: Annotated[StrictInt, Field(ge=1)] | None = None
        priority: StrictInt | None = None

    class TeiRerankRequest(_Strict):
        """text-embeddings-inference's rerank request (documents longer than the model's
        maximum are truncated, as with --auto-truncate; a 413 with `truncate` false)."""

        query: Text
        texts: Documents
        raw_scores: StrictBool = False
        return_text: StrictBool = False
        truncate: StrictBool | None = None

    class PredictRequest(_Strict):
        """text-embeddings-inference's predict request: one input (a text, `[text]` or
        `[text, text_pair]`) or a batch of them (`[[text], [text, text_pair], ...]`). Inputs
        over the model's maximum are truncated, or a 413 with `truncate` false."""

        inputs: (
            Text
            | Annotated[list[Text], Field(min_length=1, max_length=2)]
            | Annotated[
                list[Annotated[list[Text], Field(min_length=1, max_length=2)]],
                Field(min_length=1, max_length=limits.max_inputs),
            ]
        )
        raw_scores: StrictBool = False
        truncate: StrictBool | None = None

    class PrewarmShape(_Strict):
        batch_size: Annotated[StrictInt, Field(ge=1, le=limits.max_batch_size)]
        seq_len: Annotated[StrictInt, Field(ge=1, le=limits.max_seq_len)]

    class PrewarmDescriptor(_Strict):
        num_tokens: Annotated[StrictInt, Field(ge=1, le=limits.max_num_tokens)]
        num_reqs: Annotated[StrictInt, Field(ge=1, le=limits.max_batch_size)] | None = None
        is_uniform_decode: StrictBool = False

    class PrewarmRequest(_Strict):
        """One of: shapes, descriptors, top_k (predicted hot shapes); none = the ladder."""

        shapes: (
            Annotated[list[PrewarmShape], Field(min_length=1, max_length=limits.max_prewarm_items)]
            | None
        ) = None
        descriptors: (
            Annotated[
                list[PrewarmDescriptor], Field(min_length=1, max_length=limits.max_prewarm_items)
            ]
            | None
        ) = None
        top_k: Annotated[StrictInt, Field(ge=1, le=limits.max_top_k)] | None = None

        @model_validator(mode="after")
        def _one_kind(self) -> PrewarmRequest:
            given = [k for k in ("shapes", "descriptors", "top_k") if getattr(self, k) is not None]
            if len(given) > 1:
                raise ValueError(f"give only one of shapes, descriptors, top_k (got {given})")
            return self

    return RequestModels(
        infer=InferRequest,
        embeddings=EmbeddingsRequest,
        embed=EmbedRequest,
        rerank=RerankRequest,
        tei_rerank=TeiRerankRequest,
        predict=PredictRequest,
        prewarm=PrewarmRequest,
    )
