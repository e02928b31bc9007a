"""Emit an ONNX artifact (cpu / cuda flavor) and verify it against the numpy reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifact import ALL_LOGITS_FILE, DATA_FILE, GENAI_CONFIG_FILE, MODEL_FILE
from ..quant.pipeline import QuantizedModel
from ..sources.checkpoint import Checkpoint
from .onnx_decoder import DecoderBuilder, OnnxOptions
from .verify import (
    FLOAT16_TOLERANCE,
    INT8_COMPUTE_WARNING,
    KV8_TOLERANCE,
    TOLERANCE,
    compare,
    measure,
    reference_logits,
    run_forced,
    run_greedy,
)


def genai_config(checkpoint: Checkpoint, options: OnnxOptions) -> dict[str, Any]:
    """onnxruntime-genai's genai_config.json, so its runtime loads the same folder."""
    s = checkpoint.spec
    eos = list(checkpoint.eos_token_ids)
    provider = [{"cuda": {}}] if options.flavor == "cuda" else []
    return {
        "model": {
            "bos_token_id": s.bos_token_id,
            "context_length": options.max_context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider},
                "filename": ALL_LOGITS_FILE,  # onnxruntime-genai reads logits for every prompt position
                "head_size": s.head_dim,
                "hidden_size": s.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": s.num_heads,
                "num_hidden_layers": s.num_layers,
                "num_key_value_heads": s.num_kv_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": s.pad_token_id if s.pad_token_id is not None else (eos[0] if eos else 0),
            "type": s.family,  # onnxruntime-genai knows every native family by its model_type
            "vocab_size": s.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": options.max_context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


VERIFY_FILE = ".verify.onnx"  # removed again before the artifact is complete
# An int8-compute session holds about a third more than the float32 one the check runs first: at
# the 1B shape (700 MB of weights) it could set the export's memory peak, which is measured without
# it (README, Export memory), so bigger artifacts are measured with `edgekit eval` instead
DEPLOYED_CHECK_BYTES = 256 * 2**20


def _build(folder: Path, qm: QuantizedModel, options: OnnxOptions, name: str, written: dict) -> None:
    DecoderBuilder(qm, options, folder / DATA_FILE, written).build().save(folder / name)


def write_onnx(folder: Path, checkpoint: Checkpoint, qm: QuantizedModel, options: OnnxOptions) -> dict:
    """model.onnx and model.all_logits.onnx, two small graphs over one external weight file.
    Returns where each weight is in that file."""
    from dataclasses import replace

    written: dict = {}
    _build(folder, qm, replace(options, all_logits=False), MODEL_FILE, written)
    _build(folder, qm, replace(options, all_logits=True), ALL_LOGITS_FILE, written)
    checkpoint.tokenizer.write(folder)
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(checkpoint, options), indent=2))
    return written


def verify_onnx(
    folder: Path,
    checkpoint: Checkpoint,
    qm: QuantizedModel,
    options: OnnxOptions,
    prompt: list[int],
    written: dict,
    steps: int = 4,
) -> dict[str, Any]:
    """Prefill + cached decode steps through ONNX Runtime against the numpy reference on the same
    dequantized weights; raises when they disagree.

    ONNX Runtime runs model.onnx's graph over the artifact's weight file with float32 compute
    (accuracy_level 0): every weight, layout, rotary table and attention setting the export wrote is
    checked exactly (1e-3), without int8 rounding blurring a small mistake, and the session holds
    a quarter less memory than the int8 one. Then model.onnx as deployed (int8 compute) runs the same
    tokens on this CPU's kernels: measured and recorded (int8_compute), not enforced, since that
    rounding is the kernels' and differs from CPU to CPU.
    The cuda flavor's float16 graph runs on the CPU provider too (its float16 kernels), within
    float16's tolerance: the graph is checked here, the CUDA kernels only on a GPU."""
    from dataclasses import replace

    from ..runtimes.onnx import OnnxRuntime

    cuda = options.flavor == "cuda"
    context = min(options.max_context, len(prompt) + steps + 1)
    # first with a float KV cache (every weight and setting checked at the float tolerance), then
    # an int8 cache's graph on the same tokens at its own tolerance
    _build(folder, qm, replace(options, all_logits=False, accuracy_level=0, kv_bits=0), VERIFY_FILE, written)
    try:
        runtime = OnnxRuntime(folder / VERIFY_FILE, checkpoint.spec, context)
        ids, got = run_greedy(runtime, prompt, steps)
        del runtime  # its weights go before the reference's come, one layer at a time
        if options.kv_bits:
            _build(folder, qm, replace(options, all_logits=False, accuracy_level=0), VERIFY_FILE, written)
            runtime = OnnxRuntime(folder / VERIFY_FILE, checkpoint.spec, context)
            got_kv8 = run_forced(runtime, ids, len(prompt))
            del runtime
        # model.onnx itself, on this CPU's int8 kernels; not past DEPLOYED_CHECK_BYTES of weights
        small = (folder / DATA_FILE).stat().st_size <= DEPLOYED_CHECK_BYTES
        deployed = not cuda and options.accuracy_level == 4 and small
        if deployed:
            runtime = OnnxRuntime(folder / MODEL_FILE, checkpoint.spec, context)
            got_deployed = run_forced(runtime, ids, len(prompt))
            del runtime
    finally:
        (folder / VERIFY_FILE).unlink(missing_ok=True)
    tolerance = FLOAT16_TOLERANCE if cuda else TOLERANCE
    expected = reference_logits(ids, len(prompt), checkpoint.spec, qm.weights())
    result = {"checked": True, **compare(got, expected, "ONNX", tolerance)}
    if options.kv_bits:
        result["int8_kv_cache"] = compare(got_kv8, expected, "ONNX with the int8 KV cache", KV8_TOLERANCE)
    if deployed:  # measured, not enforced: int8 rounding is the kernels' and differs from CPU to CPU
        result["int8_compute"] = measure(got_deployed, expected, INT8_COMPUTE_WARNING)
    if cuda:
        return {"graph": "model.onnx's float16 graph on ONNX Runtime's CPU provider (not the CUDA kernels)", **result}
    return {"graph": "model.onnx with float32 compute", **result}
