"""Every family x pooling x (Dense, Normalize, neither), in both modules.json layouts, against
sentence-transformers' own `encode` of the same saved directory: eager, and through the runner
in NONE, FULL and PIECEWISE (CPU, mock graphs; captures in the idle gaps, then replays).

A representative matrix, not the full product: every family, every pooling mode, Dense (Tanh
and Identity, with and without bias), Normalize and neither each appear, in both layouts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_builders import (
    FAMILIES,
    GPU_EMBEDDERS,
    MAX_SEQ_LEN,
    TEXTS,
    TinySpec,
    offline_hub,
    st_encode,
    tiny_model,
)
from runner_support import capture_due

from app.cudagraph import CacheConfig, CUDAGraphMode
from app.engine.runner import EmbeddingRunner, RunnerConfig
from models import POOLING_MODES, ModelLoadError, PackedLayout, load_sentence_encoder

GEMMA = TinySpec("gemma3_text", "mean", normalize=True)
SPECS = [
    TinySpec("bert", "mean"),
    TinySpec("bert", "cls", normalize=True, layout="classic"),
    TinySpec("bert", ("mean", "max"), dense=(20, "identity", False), normalize=True),
    TinySpec("roberta", "cls", dense=(16, "tanh", True)),
    TinySpec("roberta", "mean_sqrt_len_tokens", layout="classic"),
    TinySpec("xlm-roberta", "max", normalize=True),
    TinySpec("xlm-roberta", "weightedmean", dense=(24, "tanh", True), layout="classic"),
    TinySpec("mpnet", "mean", normalize=True),  # the all-mpnet-base-v2 pipeline
    TinySpec("mpnet", "lasttoken"),
    TinySpec("mpnet", "cls", dense=(16, "identity", True), normalize=True, layout="classic"),
    TinySpec("distilbert", "mean"),  # the msmarco-distilbert pipeline
    TinySpec("distilbert", "mean", dense=(16, "tanh", True), layout="classic"),  # distiluse's
    TinySpec("electra", "cls", normalize=True),
    TinySpec("deberta-v2", "mean", normalize=True),  # DeBERTa-v3, log-bucketed distances
    TinySpec("albert", "mean"),  # the paraphrase-albert-small-v2 pipeline
    TinySpec("nomic_bert", "mean", normalize=True),  # nomic-embed-text's pipeline
    TinySpec("gte", "cls", normalize=True),  # gte-multilingual-base's pipeline
    TinySpec("qwen3", "lasttoken", normalize=True),  # Qwen3-Embedding's pipeline
    # EmbeddingGemma's pipeline: mean, a Dense widening and one narrowing, Normalize
    TinySpec("gemma3_text", "mean", dense=(24, "identity", False), dense_up=64, normalize=True),
    TinySpec("modernbert", "mean", normalize=True),
    TinySpec("modernbert", "cls", dense=(16, "tanh", True), layout="classic"),
]
MODES = [CUDAGraphMode.NONE, CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE]


def test_the_matrix_covers_every_family_pooling_and_module():
    modes = {m for s in SPECS for m in s.pooling_modes}
    assert modes == set(POOLING_MODES)
    assert {s.family for s in SPECS} == set(FAMILIES)
    for layout in ("v6", "classic"):  # Dense and Normalize read from both layouts
        assert any(s.dense for s in SPECS if s.layout == layout)
        assert any(s.normalize for s in SPECS if s.layout == layout)
    assert any(s.dense and s.dense[1] == "tanh" for s in SPECS)
    assert any(s.dense and s.dense[1] == "identity" for s in SPECS)
    assert any(s.normalize for s in SPECS) and any(not s.dense and not s.normalize for s in SPECS)


@pytest.fixture(scope="session", params=SPECS, ids=lambda s: s.label)
def tiny(request):
    """(spec, loaded encoder, sentence-transformers' embeddings of TEXTS), built once."""
    spec: TinySpec = request.param
    folder = tiny_model(spec)
    return spec, load_sentence_encoder(folder), st_encode(folder, TEXTS)


def assert_parity(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    cos = torch.nn.functional.cosine_similarity(got, ref)
    assert cos.min() >= 0.99999, (what, cos)
    torch.testing.assert_close(got.norm(dim=1), ref.norm(dim=1), atol=1e-4, rtol=0, msg=what)


def test_encoder_describes_its_pipeline(tiny):
    spec, enc, ref = tiny
    assert enc.family == spec.family
    assert enc.pooling == "+".join(spec.pooling_modes)
    assert enc.dimensions == ref.shape[1]
    if spec.dense:
        assert enc.dimensions == spec.dense[0] != enc.hidden_size
    assert enc.normalized is spec.normalize
    assert enc.max_seq_len == MAX_SEQ_LEN
    norms = ref.norm(dim=1)
    if spec.normalize:
        torch.testing.assert_close(norms, torch.ones_like(norms))
    else:
        assert (norms - 1).abs().max() > 0.1  # not normalised behind the model's back


def test_tokenizer_matches_sentence_transformers(tiny):
    spec, enc, _ = tiny
    with offline_hub():
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(tiny_model(spec)), device="cpu")
        features = st.preprocess(TEXTS)
    for i, row in enumerate(enc.tokenizer.encode(TEXTS)):
        mask = features["attention_mask"][i].bool()
        assert row == features["input_ids"][i][mask].tolist(), TEXTS[i]
    assert max(len(r) for r in enc.tokenizer.encode(TEXTS)) == MAX_SEQ_LEN  # truncation


def test_eager_padded_and_packed(tiny):
    spec, enc, ref = tiny
    assert_parity(enc.embed(TEXTS), ref, "padded")
    ids = enc.tokenizer.encode(TEXTS)
    lay = PackedLayout.build(
        [len(x) for x in ids],
        attention_width=enc.attention_width,
        device="cpu",
        dtype=torch.float32,
    )
    with torch.inference_mode():
        flat = torch.tensor([t for row in ids for t in row])
        packed = enc.model.forward_packed(flat, lay.positions, lay)
    assert_parity(packed, ref, "packed")


def check_runner(enc, ref: torch.Tensor, mode: CUDAGraphMode, what: str) -> None:
    """First call eager (captured in the gap after), second a replay: both match; then one
    request alone (NONE runs it unpacked, at its own length)."""
    cache = CacheConfig(capture_threshold=1, idle_prewarm_top_k=0)
    runner = EmbeddingRunner(
        enc, RunnerConfig(mode=mode, cache=cache, max_batch_size=4, max_num_tokens=256)
    )
    ids = enc.tokenizer.encode(TEXTS)
    for _ in range(2):
        res = runner.run(ids)
        capture_due(runner)
        assert_parity(res.embeddings, ref, f"{what} {mode.name}")
    if mode.has_graphs():
        snap = runner.graphs.snapshot()
        assert snap.replays >= len(res.descriptors) and snap.captures >= 1
    for i in (0, 5):
        assert_parity(runner.run([ids[i]]).embeddings, ref[i : i + 1], f"{what} alone {i}")


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_runner_parity(tiny, mode):
    spec, enc, ref = tiny
    check_runner(enc, ref, mode, spec.label)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("spec", GPU_EMBEDDERS, ids=lambda s: s.label)
def test_cuda_runner_parity(spec, mode):
    """The families whose attention is more than a key mask, on CUDA with real
    torch.cuda.CUDAGraph captures (skipped where CUDA is absent). The reference is the eager CPU
    forward, which matches sentence-transformers above: the GPU machine has neither
    transformers nor sentence-transformers (the models come prebuilt, $TINY_MODELS_DIR)."""
    folder = tiny_model(spec)
    ref = load_sentence_encoder(folder).embed(TEXTS)
    check_runner(load_sentence_encoder(folder, device="cuda"), ref, mode, f"{spec.label} cuda")


@pytest.mark.gpu
def test_cuda_float16_is_refused_or_replaced_where_it_overflows():
    """Gemma's activations pass float16's range: float16 asked for is refused; with a fallback
    (what `auto` passes) the model is served in it."""
    folder = tiny_model(GEMMA)
    with pytest.raises(ModelLoadError, match="overflow float16"):
        load_sentence_encoder(folder, device="cuda", dtype=torch.float16)
    enc = load_sentence_encoder(
        folder, device="cuda", dtype=torch.float16, float16_fallback=torch.bfloat16
    )
    assert enc.dtype is torch.bfloat16
    assert {p.dtype for p in enc.model.encoder.parameters()} == {torch.bfloat16}
    ref = load_sentence_encoder(folder).embed(TEXTS)
    assert torch.nn.functional.cosine_similarity(enc.embed(TEXTS), ref).min() >= 0.99


def test_modernbert_config_as_transformers_4_wrote_it(tmp_path):
    """global_attn_every_n_layers / global_rope_theta / local_rope_theta instead of layer_types
    and rope_parameters: the same model. A wider window changes the output (it is applied)."""
    spec = TinySpec("modernbert", "mean", normalize=True)
    folder = Path(shutil.copytree(tiny_model(spec), tmp_path / "m"))
    ref = load_sentence_encoder(folder).embed(TEXTS)
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    del cfg["layer_types"]
    cfg["global_rope_theta"] = rope["full_attention"]["rope_theta"]
    cfg["local_rope_theta"] = rope["sliding_attention"]["rope_theta"]
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.testing.assert_close(load_sentence_encoder(folder).embed(TEXTS), ref, atol=0, rtol=0)
    (folder / "config.json").write_text(json.dumps({**cfg, "local_attention": 128}))
    wide = load_sentence_encoder(folder).embed(TEXTS)
    assert torch.nn.functional.cosine_similarity(wide, ref).min() < 0.999
    (folder / "config.json").write_text(
        json.dumps({**cfg, "rope_parameters": {"full_attention": {"rope_type": "yarn"}}})
    )
    with pytest.raises(ModelLoadError, match="only default rotary"):
        load_sentence_encoder(folder)
