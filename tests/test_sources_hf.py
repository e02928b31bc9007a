"""Reading HF model folders, and every way a folder can be broken."""

from __future__ import annotations

import json
import mmap
import struct

import numpy as np
import pytest

from edgekit.errors import SourceError, UnsupportedArchitectureError
from edgekit.sources import open_checkpoint
from edgekit.testing import write_tiny_checkpoint


def test_tensors_are_memory_mapped_views(tiny_models):
    checkpoint = open_checkpoint(tiny_models["llama"])
    arr = checkpoint.tensors.get("model.layers.0.mlp.down_proj.weight")
    assert not arr.flags.owndata and not arr.flags.writeable
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def test_sharded_equals_single_file(tmp_path):
    single = open_checkpoint(write_tiny_checkpoint(tmp_path / "one", "qwen3"))
    sharded = open_checkpoint(write_tiny_checkpoint(tmp_path / "three", "qwen3", shards=3))
    assert len({i for i in sharded.tensors._where.values()}) == 3
    for name in single.tensors:
        assert np.array_equal(single.tensors.get(name), sharded.tensors.get(name))


def test_checkpoint_carries_tokenizer_and_template(tiny_models):
    checkpoint = open_checkpoint(tiny_models["phi3"])
    assert checkpoint.tokenizer.chat_template and "<|im_start|>" in checkpoint.tokenizer.chat_template
    assert checkpoint.tokenizer.load().get_vocab_size() == 384
    assert checkpoint.eos_token_ids == (2,)
    assert checkpoint.parameter_count == sum(np.prod(i.shape) for i in checkpoint.tensors.infos().values())


def test_chat_template_jinja_file_wins(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "m", "llama")
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert open_checkpoint(folder).tokenizer.chat_template == "{{ messages[0]['content'] }}"


# --- bad input: each gives one SourceError naming the file ---------------------------------------


def _broken(tmp_path, damage):
    folder = write_tiny_checkpoint(tmp_path / "m", "llama")
    damage(folder)
    return folder


def _truncate(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _lie_about_sizes(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = "model.layers.0.mlp.up_proj.weight"
    header[name]["shape"] = [header[name]["shape"][0] * 2, header[name]["shape"][1]]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + n :])


def _drop_tensor(folder):
    from edgekit.sources.safetensors_io import SafetensorsFile, write_safetensors

    f = SafetensorsFile(folder / "model.safetensors")
    tensors = {n: np.array(f.get(n)) for n in f.tensors if n != "model.layers.1.self_attn.k_proj.weight"}
    del f
    write_safetensors(folder / "model.safetensors", tensors)


BROKEN = {
    "missing config.json": (lambda f: (f / "config.json").unlink(), "config.json"),
    "config not json": (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    "truncated safetensors": (_truncate, "truncated"),
    "header lies about sizes": (_lie_about_sizes, "header is corrupt"),
    "missing tensor": (_drop_tensor, "model.layers.1.self_attn.k_proj.weight"),
    "no tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "no tokenizer.json"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "no *.safetensors"),
    "garbage safetensors": (lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 64), "safetensors"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_gives_one_clear_line(tmp_path, case):
    damage, expected = BROKEN[case]
    folder = _broken(tmp_path, damage)
    with pytest.raises(SourceError) as err:
        open_checkpoint(folder)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    assert str(folder) in message


def test_unknown_model_type(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "m", "llama")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "mamba"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="'mamba' is not supported.*supported: llama"):
        open_checkpoint(folder)


def test_missing_path():
    with pytest.raises(SourceError, match="no such file or folder"):
        open_checkpoint("/definitely/not/here")


def test_hub_id_offline_says_pass_a_local_folder(monkeypatch, tmp_path):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import time by huggingface_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match="could not be fetched from the Hugging Face Hub.*pass a local"):
        open_checkpoint("HuggingFaceTB/SmolLM2-135M-Instruct")
