"""Settings: sources and their precedence, validation messages naming the variable, secrets."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from app.cudagraph import CacheConfig, CUDAGraphMode
from app.devices import float16_fallback, resolve_device, resolve_dtype, resolve_graph_mode
from app.engine.runner import RunnerConfig
from app.settings import Settings, SettingsError, load_settings, unknown_env_vars
from models import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "sidecar.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.graph_mode == "AUTO"
    assert s.model_path is None  # the bundled all-MiniLM-L6-v2
    assert (s.max_batch_size, s.max_batch_tokens, s.max_batch_wait_ms) == (32, 8192, 0.0)
    assert (s.max_queue, s.request_timeout_s) == (1024, 30.0)
    assert (s.max_inputs_per_request, s.max_text_chars, s.max_body_bytes) == (256, 8192, 4 << 20)
    assert s.admin_token is None and not s.admin_enabled
    assert s.prewarm_shapes == [] and s.profile_path is None


def test_env_is_read_when_built_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("SIDECAR_GRAPH_MODE", "piecewise")
    monkeypatch.setenv("SIDECAR_CAPTURE_SIZES", "8, 1,2,4,4")
    monkeypatch.setenv("SIDECAR_PREWARM_SHAPES", "8x128, 1x16")
    monkeypatch.setenv("SIDECAR_MODEL_PATH", "toy")
    s = load_settings()
    assert s.max_batch_size == 8 and s.graph_mode == "PIECEWISE"
    assert s.capture_sizes == [1, 2, 4, 8]  # sorted, deduplicated
    assert [(p.batch_size, p.seq_len) for p in s.prewarm_shapes] == [(8, 128), (1, 16)]
    assert s.model_path == "toy"


def test_json_lists_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_SEQ_BUCKETS", "[16, 64, 256]")
    monkeypatch.setenv("SIDECAR_PREWARM_SHAPES", '[{"batch_size": 4, "seq_len": 32}]')
    s = load_settings()
    assert s.seq_buckets == [16, 64, 256]
    assert [(p.batch_size, p.seq_len) for p in s.prewarm_shapes] == [(4, 32)]


def test_toml_file_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'max_batch_size = 16\nmax_queue = 512\ngraph_mode = "NONE"\n'
        "prewarm_shapes = [{batch_size = 2, seq_len = 16}]\n"
    )
    s = load_settings(cfg)
    assert (s.max_batch_size, s.max_queue, s.graph_mode) == (16, 512, "NONE")
    assert [(p.batch_size, p.seq_len) for p in s.prewarm_shapes] == [(2, 16)]
    # Environment beats the file; explicit arguments (the CLI flags) beat both.
    monkeypatch.setenv("SIDECAR_MAX_QUEUE", "300")
    monkeypatch.setenv("SIDECAR_PORT", "9001")
    s = load_settings(cfg, port=9002)
    assert (s.max_batch_size, s.max_queue, s.port) == (16, 300, 9002)
    # SIDECAR_CONFIG names the file when no --config is given.
    monkeypatch.setenv("SIDECAR_CONFIG", str(cfg))
    assert load_settings().max_batch_size == 16


def test_sidecar_table_is_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[sidecar]\nmax_batch_size = 4\n")
    assert load_settings(cfg).max_batch_size == 4


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("SIDECAR_MAX_BATCH_SIZE", "0", "SIDECAR_MAX_BATCH_SIZE"),
        ("SIDECAR_MAX_BATCH_SIZE", "lots", "SIDECAR_MAX_BATCH_SIZE"),
        ("SIDECAR_GRAPH_MODE", "SOMETIMES", "SIDECAR_GRAPH_MODE"),
        ("SIDECAR_DEVICE", "tpu", "SIDECAR_DEVICE"),
        ("SIDECAR_DTYPE", "int8", "SIDECAR_DTYPE"),
        ("SIDECAR_CAPTURE_SIZES", "1,a", "SIDECAR_CAPTURE_SIZES"),
        ("SIDECAR_CAPTURE_SIZES", "[1, 2", "SIDECAR_CAPTURE_SIZES"),
        ("SIDECAR_CAPTURE_SIZES", "1,2,4", "SIDECAR_CAPTURE_SIZES"),  # below max_batch_size
        ("SIDECAR_PREWARM_SHAPES", "8by128", "SIDECAR_PREWARM_SHAPES"),
        ("SIDECAR_PREWARM_SHAPES", "0x16", "SIDECAR_PREWARM_SHAPES"),
        ("SIDECAR_MAX_QUEUE", "10", "SIDECAR_MAX_INPUTS_PER_REQUEST"),
        ("SIDECAR_MODEL_PATH", "/no/such/model/dir", "SIDECAR_MODEL_PATH"),
        ("SIDECAR_REQUEST_TIMEOUT_S", "-1", "SIDECAR_REQUEST_TIMEOUT_S"),
        ("SIDECAR_LOG_LEVEL", "chatty", "SIDECAR_LOG_LEVEL"),
        ("SIDECAR_GRAPH_MEMORY_BUDGET_MB", "0", "SIDECAR_GRAPH_MEMORY_BUDGET_MB"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert expected in str(info.value)


def test_bad_value_in_file_names_variable_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("max_batch_wait_ms = -5\nmax_batch_sise = 3\n")
    with pytest.raises(SettingsError) as info:
        load_settings(cfg)
    text = str(info.value)
    assert "SIDECAR_MAX_BATCH_WAIT_MS" in text and str(cfg) in text
    assert "unknown setting 'max_batch_sise'" in text


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SIDECAR_CONFIG.*does not exist"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("max_batch_size = = 3\n")
    with pytest.raises(SettingsError, match="SIDECAR_CONFIG"):
        load_settings(broken)


def test_admin_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_ADMIN_TOKEN", "s3cr3t-value")
    s = load_settings()
    assert s.admin_enabled
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "s3cr3t-value"
    for text in (repr(s), str(s), str(s.log_summary()), s.model_dump_json()):
        assert "s3cr3t-value" not in text
    # A bad value elsewhere must not echo the environment either.
    monkeypatch.setenv("SIDECAR_MAX_QUEUE", "nope")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "s3cr3t-value" not in str(info.value)


def test_empty_admin_token_means_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_ADMIN_TOKEN", "")
    assert not load_settings().admin_enabled


def test_unknown_env_vars_are_reported() -> None:
    env = {"SIDECAR_MAX_BATCH_SIZE": "4", "SIDECAR_MAX_BACH_SIZE": "4", "PATH": "/bin"}
    assert unknown_env_vars(env) == ["SIDECAR_MAX_BACH_SIZE"]


def test_device_and_dtype_resolution() -> None:
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="only supported on CUDA"):
            resolve_dtype("float16", "cpu")
        # the settings layer turns them into the error the CLI reports in one line
        with pytest.raises(SettingsError, match="SIDECAR_DEVICE"):
            load_settings(device="cuda").engine_config()
        with pytest.raises(SettingsError, match="SIDECAR_DTYPE"):
            load_settings(dtype="float16", device="cpu").engine_config()
    native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") is native
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.float16
    cfg = load_settings(model_path="toy", max_batch_wait_ms=2.5).engine_config()
    assert cfg.max_batch_wait_s == pytest.approx(0.0025) and cfg.model == "toy"
    # Where float16 overflows (Gemma): auto falls back, an explicit dtype is kept (and refused).
    assert float16_fallback("cpu") is torch.float32
    assert cfg.float16_fallback is float16_fallback(cfg.device)
    assert load_settings(dtype="float32").engine_config().float16_fallback is None


@pytest.mark.parametrize(
    ("setting", "device", "mode"),
    [
        ("auto", "cpu", "NONE"),  # mock graphs save nothing on a CPU; FULL's padding costs
        ("auto", "cuda", "FULL"),
        ("auto", "cuda:1", "FULL"),
        ("piecewise", "cpu", "PIECEWISE"),
        ("FULL", "cpu", "FULL"),
    ],
)
def test_graph_mode_auto_resolves_per_device(setting: str, device: str, mode: str) -> None:
    assert resolve_graph_mode(setting, device) == mode


def test_the_engine_config_is_built_once_from_the_settings() -> None:
    cfg = load_settings(
        model_path="toy",
        device="cpu",
        graph_mode="auto",
        max_cached_graphs=0,
        capture_threshold=3,
        max_capture_delay_ms=250,
        idle_prewarm_top_k=0,
        graph_memory_budget_mb=2,
        capture_sizes="1,2,4,32",
    ).engine_config()
    assert cfg.runner.mode is CUDAGraphMode.NONE
    assert cfg.runner.capture_sizes == (1, 2, 4, 32)
    assert cfg.runner.cache == CacheConfig(
        max_cached_graphs=0,  # no graphs: every batch runs eagerly
        memory_budget_bytes=2 << 20,
        capture_threshold=3,
        max_capture_delay_s=0.25,
        idle_prewarm_top_k=0,
    )
    with pytest.raises(AttributeError):  # frozen, all the way down
        cfg.runner.cache.capture_threshold = 1  # type: ignore[misc]


def test_one_source_for_each_default() -> None:
    """The settings' defaults are the engine configs' defaults (they cannot drift apart)."""
    s, cache, runner = Settings(), CacheConfig(), RunnerConfig(mode=CUDAGraphMode.FULL)
    assert s.max_cached_graphs == cache.max_cached_graphs
    assert s.capture_threshold == cache.capture_threshold
    assert s.min_replays_to_keep == cache.min_replays_to_keep
    assert s.idle_prewarm_top_k == cache.idle_prewarm_top_k
    assert s.max_capture_delay_ms == cache.max_capture_delay_s * 1000
    assert (s.max_batch_size, s.max_batch_tokens) == (runner.max_batch_size, runner.max_num_tokens)


def test_example_file_documents_every_setting_with_its_default() -> None:
    text = EXAMPLE.read_text()
    for name in Settings.model_fields:
        if name == "config":
            continue
        assert re.search(rf"^#? ?{name} = ", text, re.MULTILINE), f"{name} missing from {EXAMPLE}"
    # Loading the example changes nothing: its active values are the defaults.
    assert load_settings(EXAMPLE).model_dump(exclude={"config"}) == Settings().model_dump(
        exclude={"config"}
    )


def test_docs_table_lists_every_setting() -> None:
    text = (ROOT / "docs" / "service.md").read_text()
    for name in Settings.model_fields:
        assert f"`SIDECAR_{name.upper()}`" in text, name


def test_the_model_by_its_name_or_its_former_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(model="toy").model_ref == "toy"
    assert load_settings(model_path="toy").model_ref == "toy"  # the former name still works
    assert load_settings(model=str(tmp_path)).model_ref == str(tmp_path)
    hub = load_settings(model="BAAI/bge-small-en-v1.5", model_revision="v1")
    cfg = hub.engine_config()
    assert (cfg.model, cfg.model_revision) == ("BAAI/bge-small-en-v1.5", "v1")
    assert load_settings(model="default").model_ref is None
    monkeypatch.setenv("SIDECAR_MODEL", "not a model/../x y")
    with pytest.raises(SettingsError, match="SIDECAR_MODEL: .*neither a directory nor a hub id"):
        load_settings()
    monkeypatch.delenv("SIDECAR_MODEL")
    with pytest.raises(SettingsError, match="name different models"):
        load_settings(model="toy", model_path=str(tmp_path))


def test_the_task_is_auto_or_one_the_models_know(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().engine_config().task is None  # auto: from the model's config.json
    assert load_settings(task="Rerank").engine_config().task == "rerank"
    monkeypatch.setenv("SIDECAR_TASK", "summarize")
    with pytest.raises(SettingsError, match="SIDECAR_TASK: must be auto or one of embed"):
        load_settings()


def test_workers_auto_is_one_front_end_on_a_cpu_and_several_on_cuda() -> None:
    from app.devices import MAX_AUTO_WORKERS, available_cpus, resolve_workers

    assert load_settings(workers="auto").workers is None
    assert load_settings(workers="3").workers == 3
    assert load_settings(device="cpu").resolved_workers() == 1
    assert resolve_workers(None, "cpu", 64) == 1
    assert resolve_workers(None, "cuda", 2) == 2  # never fewer than two on CUDA
    assert resolve_workers(None, "cuda:0", 12) == 6  # half the cores
    assert resolve_workers(None, "cuda", 256) == MAX_AUTO_WORKERS
    assert resolve_workers(4, "cpu", 2) == 4  # a number is taken as given
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_workers_below_one_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDECAR_WORKERS", "0")
    with pytest.raises(SettingsError, match="SIDECAR_WORKERS"):
        load_settings()
