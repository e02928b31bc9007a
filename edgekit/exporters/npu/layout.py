"""The npu artifact's file names (recorded in the manifest's "npu" table, read by the runtime)."""

DATA_FILE = "model.npu.data"
GRAPHS = {"prefill": "model.npu.prefill.onnx", "decode": "model.npu.decode.onnx"}
CONTEXT_GRAPHS = {"prefill": "model.npu.prefill.ctx.onnx", "decode": "model.npu.decode.ctx.onnx"}
EMBEDDING = {"codes": "embed_tokens.int8.npy", "scales": "embed_tokens.scales.npy"}
