"""Write a GGUF file from an HF checkpoint the way llama.cpp's converter lays it out (tests only).

Tensor names (the gguf package's tables), llama's q/k row permutation, phi3's fused ffn_up,
gemma's norms stored as 1 + w and the tokenizer metadata follow llama.cpp, so reading the file
back exercises the same paths as a real download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..families import FAMILIES, module
from ..sources.checkpoint import Checkpoint
from ..sources.gguf import gguf_tensor_names, permute_rows, permuted_heads
from ..sources.gguf_tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN


def spm_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary of `size` pieces (unk, bos, eos, 256 bytes, learned pieces)."""
    from tokenizers import SentencePieceBPETokenizer

    from .tiny import _CORPUS

    learned_size = size - 3 - 256
    trainer_tok = SentencePieceBPETokenizer()
    trainer_tok.train_from_iterator([_CORPUS] * 4, vocab_size=learned_size + 40, show_progress=False, special_tokens=[])
    vocab = trainer_tok.get_vocab()
    pieces = [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if p not in ("<unk>",)][:learned_size]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    while len(tokens) < size:  # pad with unused pieces if training found fewer
        tokens.append(f"<unused{len(tokens)}>")
        types.append(5)
        scores.append(-1e9)
    return tokens, scores, types


def write_gguf(
    checkpoint: Checkpoint, path: Path, tensor_type: str = "F32", vocab: str = "bpe", pre_tokenizer: str = "gpt2"
) -> Path:
    """Write `checkpoint` as GGUF. tensor_type: F32, F16 or any type gguf.quants can quantize
    (applied to 2-D weights; norms stay F32). vocab: "bpe" (the checkpoint's byte-level
    tokenizer, with llama.cpp's name for its pre-tokenizer) or "spm" (a SentencePiece-style
    vocabulary of the model's vocab size)."""
    import gguf

    spec = checkpoint.spec
    arch = FAMILIES[spec.family].gguf_arch
    names = gguf_tensor_names(spec)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(checkpoint.name or "tiny")
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    w.add_block_count(spec.num_layers)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_heads)
    w.add_head_count_kv(spec.num_kv_heads)
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)
    w.add_rope_freq_base(spec.rope.theta)
    w.add_rope_dimension_count(spec.rotary_dim)
    if spec.head_dim != spec.hidden_size // spec.num_heads:
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
    w.add_vocab_size(spec.vocab_size)

    if vocab == "bpe":
        tok = checkpoint.tokenizer.load()
        by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
        tokens = [by_id[i] for i in range(len(by_id))]
        specials = {a.content for a in tok.get_added_tokens_decoder().values()}
        import json

        merges = json.loads(tok.to_str())["model"]["merges"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre_tokenizer)
        w.add_token_list(tokens)
        w.add_token_types([CONTROL if t in specials else NORMAL for t in tokens])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        w.add_bos_token_id(tok.token_to_id("<|endoftext|>"))
        w.add_eos_token_id(tok.token_to_id("<|im_end|>"))
        w.add_pad_token_id(tok.token_to_id("<|endoftext|>"))
        w.add_add_bos_token(False)
    else:
        tokens, scores, types = spm_vocab(spec.vocab_size)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
    if checkpoint.tokenizer.chat_template:
        w.add_chat_template(checkpoint.tokenizer.chat_template)

    qtype = gguf.GGMLQuantizationType[tensor_type]
    permute = permuted_heads(spec)
    for name in checkpoint.tensors:
        # norms as edgekit reads them: gemma's 1 + w, which is what llama.cpp's converter stores
        values = np.ascontiguousarray(checkpoint.tensors.get(name), dtype=np.float32)
        if module(name) in permute:
            values = permute_rows(values, permute[module(name)])
        if values.ndim == 2 and qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(names[name], gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        elif values.ndim == 2 and qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(names[name], values.astype(np.float16))
        else:
            w.add_tensor(names[name], values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
