"""GGUF files: metadata -> spec, tensor names and q/k permutation, dequantization, tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ALL_FAMILIES, rel_err

from edgekit.errors import SourceError, UnsupportedArchitectureError
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.testing.gguf_writer import write_gguf

pytest.importorskip("gguf")

PROMPT = [5, 17, 33, 100, 7, 250, 9, 12, 44, 61]
MIXED_TEXT = "Hello, world! Café naïve résumé — über. def add(a, b):\n    return a + b  # 😀🚀 你好"


@pytest.fixture(scope="module")
def gguf_files(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {f: write_gguf(open_checkpoint(tiny_models[f]), root / f"{f}.gguf") for f in ALL_FAMILIES}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_f32_gguf_round_trips_exactly(tiny_models, gguf_files, family):
    hf = open_checkpoint(tiny_models[family])
    gg = open_checkpoint(gguf_files[family])
    assert gg.format == "gguf"
    expected_family = "llama" if family == "mistral" else family  # llama.cpp writes Mistral as llama
    assert gg.spec.family == expected_family
    for field in (
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "qkv_bias",
        "qk_norm",
        "fused_qkv",
        "fused_gate_up",
        "tie_word_embeddings",
    ):
        assert getattr(gg.spec, field) == getattr(hf.spec, field), field
    assert gg.spec.rope.theta == hf.spec.rope.theta
    for name in hf.tensors:  # q/k rows come back in HF order
        assert np.array_equal(gg.tensors.get(name), hf.tensors.get(name)), name
    assert gg.tokenizer.load().encode(MIXED_TEXT).ids == hf.tokenizer.load().encode(MIXED_TEXT).ids
    assert gg.tokenizer.chat_template == hf.tokenizer.chat_template


@pytest.mark.parametrize("qtype,tolerance", [("F16", 2e-3), ("Q8_0", 5e-2), ("Q4_0", 0.5)])
def test_quantized_gguf_dequantizes_close_to_source(tiny_models, tmp_path, qtype, tolerance):
    hf = open_checkpoint(tiny_models["llama"])
    gg = open_checkpoint(write_gguf(hf, tmp_path / "m.gguf", qtype))
    assert gg.dtypes[qtype] == len([n for n in hf.tensors if hf.tensors.get(n).ndim == 2])
    name = "model.layers.1.self_attn.k_proj.weight"
    err = rel_err(gg.tensors.get(name), hf.tensors.get(name))
    assert 0 < err < tolerance
    for matrix in ("model.embed_tokens.weight", name):  # some rows alone, as the whole tensor has them
        whole, rows = gg.tensors.get(matrix), np.array([[3, 0], [7, 3]])
        assert np.array_equal(gg.tensors.take(matrix, rows), whole[rows])
        assert np.array_equal(gg.tensors.rows(matrix, 2, 9), whole[2:9])


def test_gemma_gguf_stores_norms_as_llama_cpp_does(tiny_models, gguf_files):
    """llama.cpp's converter writes gemma's norm weights as 1 + w; the HF folder holds w. Both
    read as the multiplier 1 + w, and the HF folder written back from the GGUF holds w again."""
    import gguf

    from edgekit.sources.hf_writer import save_hf_folder
    from edgekit.sources.safetensors_io import SafetensorsFile

    stored = SafetensorsFile(tiny_models["gemma"] / "model.safetensors")
    in_gguf = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(gguf_files["gemma"])).tensors}
    for hf_name, gguf_name in (
        ("model.layers.1.input_layernorm.weight", "blk.1.attn_norm.weight"),
        ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
        ("model.norm.weight", "output_norm.weight"),
    ):
        w = np.asarray(stored.get(hf_name), dtype=np.float32)
        assert np.abs(w).mean() < 0.5  # near 0: gemma's stored convention
        assert np.array_equal(in_gguf[gguf_name], w + np.float32(1)), gguf_name
        assert np.array_equal(open_checkpoint(tiny_models["gemma"]).tensors.get(hf_name), w + np.float32(1))
    written = save_hf_folder(open_checkpoint(gguf_files["gemma"]), gguf_files["gemma"].parent / "gemma-hf")
    back = SafetensorsFile(written / "model.safetensors")
    name = "model.layers.1.input_layernorm.weight"
    assert np.allclose(back.get(name), stored.get(name), atol=1e-6)


try:
    import torch
    import transformers
except ImportError:
    transformers = torch = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="needs transformers and torch")


# transformers' GGUF loader drops qwen3's attention.key_length (it assumes head_dim 128), so a tiny
# qwen3 cannot be compared through it, and it reads no gemma GGUF; the exact round trips above cover both.
@needs_transformers
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_logits_match_transformers_gguf_loader(gguf_files, family):
    path = gguf_files[family]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        expected = model(torch.tensor([PROMPT])).logits[0].numpy()
    ours = ReferenceModel.from_checkpoint(open_checkpoint(path)).forward(PROMPT)
    assert rel_err(ours, expected) < 1e-4


@needs_transformers
@pytest.mark.parametrize("vocab", ["bpe", "spm"])
def test_tokenizer_matches_transformers_gguf_tokenizer(tiny_models, tmp_path, vocab):
    path = write_gguf(open_checkpoint(tiny_models["llama"]), tmp_path / "m.gguf", "F32", vocab)
    ours = open_checkpoint(path).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in (MIXED_TEXT, "spaces  inside\tand\ttabs\n\nnew lines", "<|im_start|>user\nhi<|im_end|>"):
        assert ours.load().encode(text).ids == theirs(text)["input_ids"], text
    if vocab == "spm":
        # Leading spaces: like llama.cpp and SentencePiece, the dummy prefix is always added
        # ("  a" -> "▁▁▁a"); transformers' Metaspace skips it when the text starts with a space.
        assert ours.load().encode("  leading").tokens[1:4] == ["▁", "▁", "▁l"]
        assert "byte fallback" in ours.kind
        ids = ours.load().encode("😀").ids
        assert ours.load().decode(ids) == "😀"  # bytes outside the pieces come through <0xNN> tokens


# --- bad input -------------------------------------------------------------------------------------


def test_wrong_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGML" + b"\0" * 100)
    with pytest.raises(SourceError, match="not a GGUF file"):
        open_checkpoint(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_cut_short(gguf_files, tmp_path, keep):
    data = gguf_files["llama"].read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SourceError) as err:
        open_checkpoint(path)
    assert "truncated" in str(err.value) and str(path) in str(err.value)


def test_unsupported_gguf_architecture(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitectureError, match="'mamba' is not supported"):
        open_checkpoint(tmp_path / "m.gguf")
