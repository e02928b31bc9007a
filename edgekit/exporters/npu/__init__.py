"""The npu flavor: static-shape QDQ ONNX graphs for Qualcomm's QNN HTP backend (the Hexagon NPU).

export.py is the entry point (require_npu, npu_options, export_npu); it runs, in order:
weights.py (int8 per-channel weights, norms folded in), calibration.py (uint16 activation ranges
from the float graphs), write.py (the QDQ graphs and the embedding table, through
decoder_graph.py over qdq_graph.py), context.py (EPContext models for a SoC) and verify.py
(CPU and QNN HTP against the numpy reference). layout.py names the files, options.py the sizes.

What QNN HTP takes (measured on the HTP emulator of onnxruntime-qnn 2.7 / QNN 2.51, CPU fallback
off) shapes the graphs:
- static shapes only: a prefill graph of `chunk` tokens and a decode graph of 1 token, both over
  a fixed KV cache of `context` positions; the runtime pads the last prompt chunk;
- QDQ: every activation is uint16 through QuantizeLinear -> DequantizeLinear with a range from
  calibration; data-movement ops (Reshape, Transpose, Slice, Concat) keep their input's range;
- weights int8 per output channel through DequantizeLinear (symmetric). Blocked int4
  DequantizeLinear is refused; QNN's own int4 block format (LPBQ: uint8 block scales under
  per-channel float scales) compiles but computes wrong numbers on the x86-64 emulator; int4 per
  channel runs but one 4-bit grid per row costs too much quality. So the recipe's 4-bit weights
  (RTN/HQQ/AWQ/GPTQ, as for every flavor) are stored as int8 per channel: the same values within
  1/254 of each row's largest, twice the bytes of int4;
- standard ONNX ops only: RMSNormalization (opset 23; its weight folded into the next MatMul's
  weights; a written-out ReduceL2 -> Div norm made QNN insert float ops and fail to finalize),
  rotary as x*cos + swap_halves(x)*sin with the tables as inputs, attention as
  MatMul -> Add(mask) -> Softmax -> MatMul with the additive mask an input, SwiGLU as Sigmoid and
  Mul. Keys are kept transposed [1, kv, head_dim, ctx] so no per-step transpose of the cache;
- the HTP's own arithmetic is not bit-exact QDQ: uint16 x int8 MatMuls land ~110 LSB off the
  exact product, and a uint16 x uint16 MatMul takes its second input at 8 bits.
The embedding lookup is done by the runtime from an int8 per-row table (embed_tokens.*.npy).
Node names follow `/model/layers.{n}/{block}/{op}` as in the cpu flavor.
"""
