"""Service settings: one validated object built from SIDECAR_* variables and an optional TOML file.

Precedence, highest first: explicit keyword arguments (the CLI), environment variables
(`SIDECAR_MAX_BATCH_SIZE=16`), the TOML file (`max_batch_size = 16`, named by `--config FILE`,
`Settings(config=...)` or `SIDECAR_CONFIG`), then the defaults below. Nothing here is read at
import time: `load_settings()` builds the object and `create_app(settings)` receives it.

A bad value raises `SettingsError` whose message names the variable (and the file key when the
value came from the TOML file), so the process refuses to start with an actionable line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.options import CacheConfig
from app.devices import (
    available_cpus,
    device_name,
    float16_fallback,
    resolve_device,
    resolve_dtype,
    resolve_graph_mode,
    resolve_workers,
)
from app.engine.config import TOY_MODEL, EngineConfig, RunnerConfig
from models import TASKS
from models.hub import is_hub_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib (install tomli there)
    import tomli as tomllib

ENV_PREFIX = "SIDECAR_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

GraphModeName = Literal["AUTO", "NONE", "PIECEWISE", "FULL"]
# The engine's frozen configs hold the defaults; the settings take theirs from them.
_CACHE = CacheConfig()
DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class SettingsError(ValueError):
    """A setting is invalid; the message names the variable (one line per problem)."""


class PrewarmShape(BaseModel):
    """A (batch_size, seq_len) request shape to capture at start-up (padded to the ladders)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(ge=1, le=65536)
    seq_len: int = Field(ge=1, le=65536)


def env_name(field: str) -> str:
    """`max_batch_size` -> `SIDECAR_MAX_BATCH_SIZE`."""
    return ENV_PREFIX + field.upper()


def _split_list(value: Any) -> Any:
    """Accept JSON (`[1, 2, 4]`) or a comma list (`1,2,4`) from the environment or the CLI."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "":
        return None
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_shapes(value: Any) -> Any:
    """Prewarm shapes as JSON (`[{"batch_size": 8, "seq_len": 128}]`) or compact `8x128,1x32`."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "":
        return []
    if text.startswith("["):
        return json.loads(text)
    shapes: list[dict[str, str]] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        batch, sep, seq = part.partition("x")
        if not sep:
            raise ValueError(f"shape {part!r} is not BATCHxSEQ (e.g. 8x128)")
        shapes.append({"batch_size": batch.strip(), "seq_len": seq.strip()})
    return shapes


IntList = Annotated[list[Annotated[int, Field(ge=1)]] | None, NoDecode]
ShapeList = Annotated[list[PrewarmShape], NoDecode]


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by `config=` (init) or SIDECAR_CONFIG, top-level keys only."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.path = _config_path(init_kwargs)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns the whole mapping at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        return read_toml(self.path)


def _config_path(init_kwargs: dict[str, Any]) -> Path | None:
    raw = init_kwargs.get("config")
    if raw is None:
        raw = os.environ.get(CONFIG_ENV) or None
    return None if raw is None else Path(raw)


def read_toml(path: Path) -> dict[str, Any]:
    """The settings in a TOML file; an optional `[sidecar]` table is accepted as well."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"{CONFIG_ENV}: config file {str(path)!r} does not exist") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{CONFIG_ENV}: cannot read config file {str(path)!r}: {exc}") from exc
    table = data.get("sidecar", data)
    if not isinstance(table, dict):
        raise SettingsError(f"{CONFIG_ENV}: [sidecar] in {str(path)!r} must be a table")
    return dict(table)


class Settings(BaseSettings):
    """Every knob of the service. See docs/service.md for the table with the meaning of each."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    # Where the settings file is (also SIDECAR_CONFIG); its keys are the names below.
    config: Path | None = None

    # --- server (used by `python -m app serve`; flags override) ---
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: LogLevel = "info"
    access_log: bool = False
    graceful_timeout_s: int = Field(default=30, ge=1, le=86400)
    drain_delay_s: float = Field(default=0.0, ge=0)
    # HTTP front-end processes around the one engine process; auto: 1 on a CPU host (one
    # process does everything), several on CUDA (app.devices.resolve_workers).
    workers: int | None = Field(default=None, ge=1, le=256)

    # --- model ---
    # A directory, a Hugging Face hub id, "toy" (the test model) or unset (the bundled MiniLM).
    model: str | None = None
    model_path: str | None = None  # the former name of `model`, still accepted
    model_revision: str | None = Field(default=None, min_length=1, max_length=256)
    # auto: from the model's config.json (an embedder, a reranker with one label, a classifier)
    task: str = "auto"
    device: str = "auto"
    dtype: DtypeName = "auto"
    max_seq_len: int | None = Field(default=None, ge=2, le=8192)
    num_threads: int = Field(default=0, ge=0, le=1024)

    # --- CUDA graphs ---
    graph_mode: GraphModeName = "AUTO"
    capture_sizes: IntList = None
    seq_buckets: IntList = None
    token_buckets: IntList = None
    # 0 keeps no graphs: every batch runs eagerly.
    max_cached_graphs: int = Field(default=_CACHE.max_cached_graphs, ge=0, le=100_000)
    graph_memory_budget_mb: float | None = Field(default=None, gt=0)
    capture_threshold: int = Field(default=_CACHE.capture_threshold, ge=1, le=1_000_000)
    min_replays_to_keep: int = Field(default=_CACHE.min_replays_to_keep, ge=0)
    max_capture_delay_ms: float = Field(
        default=_CACHE.max_capture_delay_s * 1000.0, ge=0, le=3_600_000
    )
    idle_prewarm_top_k: int = Field(default=_CACHE.idle_prewarm_top_k, ge=0, le=10_000)
    prewarm_shapes: ShapeList = []
    prewarm_ladder: bool = False
    profile_path: Path | None = None
    profile_prewarm_top_k: int = Field(default=8, ge=0, le=10_000)

    # --- batching and queueing ---
    max_batch_size: int = Field(default=RunnerConfig.max_batch_size, ge=1, le=4096)
    max_batch_tokens: int = Field(default=RunnerConfig.max_num_tokens, ge=1)
    max_batch_wait_ms: float = Field(default=0.0, ge=0, le=10_000)
    max_queue: int = Field(default=1024, ge=1)  # texts (or pairs) waiting at most
    request_timeout_s: float = Field(default=30.0, gt=0)
    retry_after_s: int = Field(default=1, ge=0, le=3600)

    # --- request limits ---
    max_inputs_per_request: int = Field(default=256, ge=1)
    max_documents: int = Field(default=1000, ge=1)  # per rerank call
    max_text_chars: int = Field(default=8192, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=64)

    # --- admin and metrics ---
    admin_token: SecretStr | None = None
    metrics_hot_shapes: int = Field(default=10, ge=0, le=1000)

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("auto", ""):
            return None
        return value

    @field_validator("graph_mode", mode="before")
    @classmethod
    def _upper_mode(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_level", "dtype", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in ("auto", *TASKS):
                raise ValueError(f"must be auto or one of {', '.join(TASKS)}")
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        return device_name(value) if isinstance(value, str) else value

    @field_validator("capture_sizes", "seq_buckets", "token_buckets", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("capture_sizes", "seq_buckets", "token_buckets")
    @classmethod
    def _sorted_unique(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must not be empty (leave unset for the default ladder)")
        return sorted(set(value))

    @field_validator("prewarm_shapes", mode="before")
    @classmethod
    def _shapes(cls, value: Any) -> Any:
        return _parse_shapes(value)

    @field_validator("model", "model_path", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value in ("", "default", "minilm"):
                return None
            if value.lower() == TOY_MODEL:
                return TOY_MODEL
            if Path(value).expanduser().is_dir():
                return str(Path(value).expanduser())
            if not is_hub_id(value):
                raise ValueError(
                    f"{value!r} is neither a directory nor a hub id like 'org/name' "
                    "(nor 'toy' or 'default')"
                )
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        # `SIDECAR_ADMIN_TOKEN=` (empty) must disable admin, not enable it with an empty secret.
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems: list[str] = []
        if self.max_queue < self.max_inputs_per_request:
            problems.append(
                f"{env_name('max_queue')} ({self.max_queue}) must be at least "
                f"{env_name('max_inputs_per_request')} ({self.max_inputs_per_request}), "
                "or the largest allowed request could never be queued"
            )
        if self.capture_sizes is not None and max(self.capture_sizes) < self.max_batch_size:
            problems.append(
                f"{env_name('capture_sizes')} (largest {max(self.capture_sizes)}) must reach "
                f"{env_name('max_batch_size')} ({self.max_batch_size})"
            )
        if self.max_seq_len is not None and self.max_batch_tokens < self.max_seq_len:
            problems.append(
                f"{env_name('max_batch_tokens')} ({self.max_batch_tokens}) must be at least "
                f"{env_name('max_seq_len')} ({self.max_seq_len}): one long text must fit a batch"
            )
        if self.model and self.model_path and self.model != self.model_path:
            problems.append(
                f"{env_name('model')} and {env_name('model_path')} name different models; "
                f"set only {env_name('model')}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs: dict[str, Any] = dict(getattr(init_settings, "init_kwargs", {}))
        return (init_settings, env_settings, _TomlFileSource(settings_cls, init_kwargs))

    # --- derived values ---
    @property
    def graph_memory_budget_bytes(self) -> int | None:
        if self.graph_memory_budget_mb is None:
            return None
        return int(self.graph_memory_budget_mb * 1024 * 1024)

    @property
    def model_ref(self) -> str | None:
        """The model to serve, whichever of its two names was set."""
        return self.model or self.model_path

    def resolved_workers(self) -> int:
        """Front-end processes `serve` starts (1: no separate engine process)."""
        return resolve_workers(self.workers, self.resolved_device(), available_cpus())

    def resolved_device(self) -> str:
        """The device `device` names on this machine; SettingsError if it has none such."""
        try:
            return resolve_device(self.device)
        except ValueError as exc:
            raise SettingsError(f"invalid setting {env_name('device')}: {exc}") from None

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None

    def engine_config(self) -> EngineConfig:
        """The engine's one frozen, nested config, with device, dtype and graph mode resolved."""
        device = self.resolved_device()
        try:
            dtype = resolve_dtype(self.dtype, device)
        except ValueError as exc:
            raise SettingsError(f"invalid setting {env_name('dtype')}: {exc}") from None
        fallback = float16_fallback(device) if self.dtype == "auto" else None
        cache = CacheConfig(
            max_cached_graphs=self.max_cached_graphs,
            memory_budget_bytes=self.graph_memory_budget_bytes,
            capture_threshold=self.capture_threshold,
            min_replays_to_keep=self.min_replays_to_keep,
            max_capture_delay_s=self.max_capture_delay_ms / 1000.0,
            idle_prewarm_top_k=self.idle_prewarm_top_k,
        )
        runner = RunnerConfig(
            mode=CUDAGraphMode[resolve_graph_mode(self.graph_mode, device)],
            max_batch_size=self.max_batch_size,
            max_num_tokens=self.max_batch_tokens,
            capture_sizes=_tuple(self.capture_sizes),
            seq_buckets=_tuple(self.seq_buckets),
            token_buckets=_tuple(self.token_buckets),
            cache=cache,
        )
        return EngineConfig(
            model=self.model_ref,
            model_revision=self.model_revision,
            task=None if self.task == "auto" else self.task,
            device=device,
            dtype=dtype,
            float16_fallback=fallback,
            max_seq_len=self.max_seq_len,
            num_threads=self.num_threads,
            runner=runner,
            max_batch_wait_s=self.max_batch_wait_ms / 1000.0,
            max_queue=self.max_queue,
            request_timeout_s=self.request_timeout_s,
            prewarm_shapes=tuple((s.batch_size, s.seq_len) for s in self.prewarm_shapes),
            prewarm_ladder=self.prewarm_ladder,
            profile_path=self.profile_path,
            profile_prewarm_top_k=self.profile_prewarm_top_k,
        )

    def log_summary(self) -> dict[str, Any]:
        """The settings for a start-up log line; secrets appear only as set/unset."""
        data = self.model_dump(mode="json", exclude={"admin_token"})
        data["admin_token"] = "set" if self.admin_enabled else "unset"
        return data


def _tuple(values: list[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)


def engine_error_message(message: str, settings: tuple[str, ...]) -> str:
    """An engine configuration error with the variables it concerns named."""
    if not settings:
        return message
    return f"{message}; check {', '.join(env_name(name) for name in settings)}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings or raise SettingsError with one line per bad variable."""
    init: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        init["config"] = Path(config_file)
    toml_path = _config_path(init)
    try:
        return Settings(**init)
    except ValidationError as exc:
        file_keys = set(read_toml(toml_path)) if toml_path is not None else set()
        raise SettingsError(_describe(exc, set(init), file_keys, toml_path)) from None
    except ValueError as exc:  # JSON in an env list, raised while decoding
        raise SettingsError(str(exc)) from None


def _describe(
    exc: ValidationError, init_keys: set[str], file_keys: set[str], toml_path: Path | None
) -> str:
    lines: list[str] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = err.get("loc") or ()
        field = str(loc[0]) if loc else ""
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if not field:
            lines.append(f"invalid settings: {msg}")
            continue
        where = ".".join(str(p) for p in loc[1:])
        suffix = f" (item {where})" if where else ""
        name = env_name(field)
        if err.get("type") == "extra_forbidden":
            origin = f" in {toml_path}" if field in file_keys else ""
            lines.append(f"unknown setting {field!r}{origin} (no such variable {name})")
        elif field in init_keys:
            lines.append(f"invalid setting {field}{suffix}: {msg}")
        elif field not in file_keys or os.environ.get(name) is not None:
            lines.append(f"invalid setting {name}{suffix}: {msg}")
        else:
            lines.append(f"invalid setting {name} ({field} in {toml_path}){suffix}: {msg}")
    return "\n".join(lines)


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[str]:
    """SIDECAR_* variables that match no setting (likely typos); the CLI warns about them."""
    env = os.environ if environ is None else environ
    known = {env_name(name) for name in Settings.model_fields}
    return sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
