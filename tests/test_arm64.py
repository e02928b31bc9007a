"""The Raspberry Pi deployment path on the Pi's own instruction set, under QEMU user emulation: the
bundles `edgekit bundle --target raspberry-pi-5/-4 --wheels` writes, installed offline from their
own wheels in an arm64 Debian trixie root (CPython 3.13, what the bundles target; made by
tests/arm64/sysroot.sh), their logits on the emulated Pi 5 and Pi 4 cores (QEMU_CPU cortex-a76 and
cortex-a72, so ONNX Runtime takes those cores' int8 kernels) against the numpy reference, and their
servers answering. Needs root (binfmt_misc, chroot) and Debian's archive: skips without them, fails
under CI=1. `pytest -m arm64` selects these tests, `-m "not arm64"` leaves them out."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import export
from edgekit.cli import cli
from edgekit.device_profiles import load_profile
from edgekit.exporters.pipeline import WRITERS, profile_recipe
from edgekit.exporters.verify import TOLERANCE
from edgekit.reference import ReferenceModel

pytestmark = pytest.mark.arm64

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "arm64"
CACHE = REPO / ".cache" / "arm64"
CORES = {"raspberry-pi-5": "cortex-a76", "raspberry-pi-4": "cortex-a72"}
RECIPES = ("raspberry-pi-5", "raspberry-pi-4", None)  # None: the default recipe
TEXT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid."
PROMPT_TOKENS = 8  # the rest of TEXT's tokens are fed as cached decode steps
# int8 compute (accuracy_level 4) against the reference's float32 on the same weights: activations
# rounded to int8 per block move the logits by 1-4% of the largest logit (tiny models about 1%,
# SmolLM2 3.6%), on x86-64's VNNI kernels and arm64's dot-product ones alike; the README's
# deployment section has the numbers. A wrong block, scale or zero point moves them by over 50%.
INT8_TOLERANCE = 5e-2
# arm64's root mean square error may exceed x86-64's on the same run by a quarter (+ 1e-4). Not the
# max over every logit: two roundings of one run put their largest miss on different logits, and
# that ratio moved from 1.0 to 1.45 with the same kernels when the weights changed
WORSE_THAN_X86 = 1.25
MIN_TOP1 = 0.9
# The Pi 4's Cortex-A72 has no dot product: ONNX Runtime's MatMulNBits takes its float32 kernels
# there whatever the accuracy level, so its logits are the reference's within the export verify's
# float32 tolerance; the Pi 5's A76 takes the int8 ones (error above it). Pinned per core.
INT8_COMPUTE = {"cortex-a76": True, "cortex-a72": False}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sysroot() -> Path:
    made = subprocess.run(
        [SCRIPTS / "sysroot.sh", "trixie", CACHE / "trixie"], capture_output=True, text=True, timeout=900
    )
    if made.returncode == 3:
        _unavailable(made.stderr.strip().splitlines()[-1])
    assert made.returncode == 0, made.stderr
    return CACHE / "trixie" / "root"


@pytest.fixture(scope="module")
def device(sysroot, tmp_path_factory):
    """A fresh copy of the arm64 root: the Pi, as it is before the bundle is copied to it."""
    root = tmp_path_factory.mktemp("pi") / "root"
    subprocess.run(["cp", "-a", sysroot, root], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def start_on_device(root: Path, core: str, *command: str, offline: bool = False, env: str = "", **popen):
    """COMMAND inside the device's root under the emulated `core`, in a process group of its own."""
    chroot = [SCRIPTS / "chroot.sh", *(["--offline"] if offline else []), root, *command]
    variables = {**os.environ, "QEMU_CPU": core, "CHROOT_ENV": env}
    return subprocess.Popen(chroot, env=variables, text=True, start_new_session=True, **popen)


def stop(process: subprocess.Popen) -> None:
    """Every process the command started, whatever namespace it made."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def on_device(root: Path, core: str, *command: str, offline: bool = False, timeout: float = 900):
    """Run COMMAND on the device to its end (or the timeout); CompletedProcess with its output."""
    process = start_on_device(root, core, *command, offline=offline, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        stop(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def export_with_reference(source: Path, out: Path, profile: str | None, **options) -> dict:
    """export() for `profile`, and the numpy reference's logits for TEXT on the very weights it
    writes (the export's own quantized model, taken while it writes)."""
    onnx_cpu = WRITERS[("onnx", "cpu")]
    taken = {}

    def write(job):
        written = onnx_cpu.write(job)
        ids = job.checkpoint.tokenizer.load().encode(TEXT).ids
        reference = ReferenceModel(job.checkpoint.spec, {}, layers=False, head=False)
        taken.update(ids=ids, expected=reference.forward_streamed(job.qm.weights(), ids)[PROMPT_TOKENS - 1 :])
        return written

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(WRITERS, ("onnx", "cpu"), replace(onnx_cpu, write=write))
        # the float KV cache: these checks pin the matmul kernels' error on each core (measured
        # before the Pi profiles took an int8 cache, whose own error tests/test_kv_cache.py holds)
        export(source, out, profile=profile, **{"kv_bits": 0, **options})
    ids = taken["ids"]
    return {"artifact": out, "profile": profile, "prompt": ids[:PROMPT_TOKENS], "steps": ids[PROMPT_TOKENS:],
            "expected": taken["expected"]}  # fmt: skip


def bundle(artifact: Path, target: str, out: Path) -> Path:
    result = CliRunner().invoke(cli, ["bundle", str(artifact), "--target", target, "-o", str(out), "--wheels"])
    assert result.exit_code == 0, result.output
    record({f"bundle {target}": result.stdout.splitlines()[0]})
    return out


def device_logits(root: Path, core: str, python: str, checks: dict[str, dict]) -> dict[str, np.ndarray]:
    """Each check's logits from `logits.py` run on the device by `python`, with its artifact copied there."""
    folder = root / "root" / "check"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    shutil.copy(SCRIPTS / "logits.py", folder)
    runs = []
    for name, check in checks.items():
        shutil.copytree(check["artifact"], folder / name)
        profile = check["profile"] or "generic-arm64-cpu"
        runs.append({"name": name, "artifact": f"/root/check/{name}", "profile": profile,
                     "prompt": check["prompt"], "steps": check["steps"]})  # fmt: skip
    (folder / "job.json").write_text(json.dumps({"runs": runs}))
    ran = on_device(root, core, python, "/root/check/logits.py", "/root/check/job.json", "/root/check/out.npz")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with np.load(folder / "out.npz") as out:
        return {name: out[name] for name in checks}


def agreement(got: np.ndarray, expected: np.ndarray) -> tuple[float, float, float]:
    """(max |difference| over the largest |logit|, top-1 agreement): the export verify's measures;
    and the root mean square difference over the same largest |logit|."""
    scale = np.abs(expected).max()
    error = float(np.abs(got - expected).max() / scale)
    rms = float(np.sqrt(np.mean(np.square(got - expected))) / scale)
    return error, float(np.mean(got.argmax(-1) == expected.argmax(-1))), rms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int, question: str) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": question}], "max_tokens": 12, "temperature": 0}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.load(answer)["choices"][0]["message"]["content"]


def serve_on_device(root: Path, core: str, command: list[str], port: int, wait: float = 600):
    """Start a server on the device and wait until /health says it is loaded; the caller stops it."""
    env = f"EDGEKIT_HOST=127.0.0.1 EDGEKIT_PORT={port}"
    process = start_on_device(root, core, *command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server on the device stopped: {process.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as health:
                if json.load(health).get("status") == "ok":
                    return process
        except OSError:
            pass
        time.sleep(2)
    stop(process)
    pytest.fail(f"the server on the device did not load within {wait:.0f} s: {process.stdout.read()[-2000:]}")


def host_logits(check: dict) -> np.ndarray:
    """The same run on this machine's ONNX Runtime (x86-64's int8 kernels), for scale."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_logits", SCRIPTS / "logits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run({**check, "profile": check["profile"] or "generic-arm64-cpu"})[0]


def record(measured: dict) -> None:
    """Keep what a run measured in .cache/arm64/measured.json (the README quotes it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "measured.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**previous, **measured}, indent=1))


def check_logits(got: dict[str, np.ndarray], checks: dict[str, dict], core: str) -> dict:
    measured = {}
    for name, check in checks.items():
        error, top1, rms = agreement(got[name], check["expected"])
        host_error, host_top1, host_rms = agreement(host_logits(check), check["expected"])
        measured[name] = {"core": core, "max_rel_error": error, "top1": top1, "rms_rel_error": rms,
                          "x86_64_max_rel_error": host_error, "x86_64_top1": host_top1,
                          "x86_64_rms_rel_error": host_rms}  # fmt: skip
    record({f"{core} {name}": values for name, values in measured.items()})
    for name, m in measured.items():
        assert m["max_rel_error"] < INT8_TOLERANCE and m["top1"] >= MIN_TOP1, (name, m)
        assert m["rms_rel_error"] <= WORSE_THAN_X86 * m["x86_64_rms_rel_error"] + 1e-4, (name, m)
        assert (m["max_rel_error"] > TOLERANCE) == INT8_COMPUTE[core], (name, m)
    return measured


@pytest.fixture(scope="module")
def tiny_checks(tiny_models, tmp_path_factory) -> dict[str, dict]:
    """A tiny llama exported with each Pi profile's recipe (awq-gptq, blocks of 32, 8- or 4-bit
    lm_head) and the default one (blocks of 128)."""
    root = tmp_path_factory.mktemp("tiny-recipes")
    return {
        f"tiny-{profile or 'default'}": export_with_reference(
            tiny_models["llama"], root / (profile or "default"), profile, max_context=128
        )  # fmt: skip
        for profile in RECIPES
    }


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, tmp_path_factory) -> dict[str, dict]:
    """SmolLM2 exported for each Pi profile, with round-to-nearest in place of the profile's awq-gptq:
    the same blocks, bits and int8 compute (what picks ONNX Runtime's kernels) without minutes of
    calibration."""
    root = tmp_path_factory.mktemp("smollm2-pi")
    checks = {}
    for profile in CORES:
        recipe = replace(profile_recipe(load_profile(profile).export), algorithm="rtn")
        checks[profile] = export_with_reference(smollm2_gguf, root / profile, profile, recipe=recipe, max_context=512)
    return checks


@pytest.fixture(scope="module")
def pi5(device, smollm2, tmp_path_factory) -> dict:
    """SmolLM2's Pi 5 bundle copied to the device and installed there by its install.sh, offline."""
    made = bundle(smollm2["raspberry-pi-5"]["artifact"], "raspberry-pi-5", tmp_path_factory.mktemp("b") / "smollm2-pi5")
    shutil.copytree(made, device / "root" / made.name, symlinks=True)
    start = time.monotonic()
    installed = on_device(device, CORES["raspberry-pi-5"], f"/root/{made.name}/install.sh", offline=True)
    return {"name": made.name, "installed": installed, "seconds": time.monotonic() - start}


def test_pi5_bundle_installs_offline_from_its_own_wheels(pi5, device):
    installed = pi5["installed"]
    assert installed.returncode == 0, installed.stdout + installed.stderr
    home = device / "opt" / pi5["name"]
    assert (home / ".venv" / "bin" / "edgekit").is_file()
    assert "Processing /opt/smollm2-pi5/wheels/onnxruntime-" in installed.stdout
    assert "systemd is not running here, so edgekit.service is enabled for the next boot" in installed.stderr
    record({"install.sh": installed.stderr.strip().splitlines()[-3:]})
    wants = device / "etc/systemd/system/multi-user.target.wants/edgekit.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edgekit.service"
    assert "edgekit:" in (device / "etc" / "passwd").read_text()
    stated = re.search(r"Install size: about (\d+) MB in `/opt/smollm2-pi5`", (home / "README.md").read_text())
    measured = sum(p.lstat().st_size for p in home.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6
    record({"install": {"stated_mb": int(stated.group(1)), "measured_mb": round(measured),
                        "seconds": round(pi5["seconds"])}})  # fmt: skip
    assert 0.9 < measured / int(stated.group(1)) < 1.3, (measured, stated.group(0))


def test_pi5_logits_against_the_reference(pi5, device, smollm2, tiny_checks):
    checks = {"smollm2-pi5": smollm2["raspberry-pi-5"], **tiny_checks}
    python = f"/opt/{pi5['name']}/.venv/bin/python"
    check_logits(device_logits(device, CORES["raspberry-pi-5"], python, checks), checks, CORES["raspberry-pi-5"])


def test_pi5_service_answers(pi5, device):
    """run.sh as the systemd unit starts it (user edgekit, HOME=/nonexistent)."""
    command = ["runuser", "-u", "edgekit", "--", "env", "HOME=/nonexistent", f"/opt/{pi5['name']}/run.sh"]
    assert_answers_paris(device, CORES["raspberry-pi-5"], command)


@pytest.fixture(scope="module")
def pi4(device, smollm2, tmp_path_factory) -> dict:
    """SmolLM2's Pi 4 bundle run the way its README's foreground line does (./run.sh, no systemd):
    its first run installs, offline."""
    made = bundle(smollm2["raspberry-pi-4"]["artifact"], "raspberry-pi-4", tmp_path_factory.mktemp("b") / "smollm2-pi4")
    shutil.copytree(made, device / "root" / made.name, symlinks=True)
    installed = on_device(device, CORES["raspberry-pi-4"], f"/root/{made.name}/run.sh", "--install-only", offline=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return {"name": made.name}


def test_pi4_logits_against_the_reference(pi4, device, tiny_checks):
    """The tiny model's recipes only: float32 kernels under emulation take SmolLM2 two minutes here,
    and its Pi 4 weights are its Pi 5 ones (tied embeddings: no 4-bit lm_head of its own)."""
    checks = tiny_checks
    python = f"/root/{pi4['name']}/.venv/bin/python"
    check_logits(device_logits(device, CORES["raspberry-pi-4"], python, checks), checks, CORES["raspberry-pi-4"])


def test_pi4_run_sh_answers(pi4, device):
    assert_answers_paris(device, CORES["raspberry-pi-4"], [f"/root/{pi4['name']}/run.sh"])


def assert_answers_paris(device, core: str, command: list[str]) -> None:
    """The server `command` starts on `core` answers the README's question with Paris."""
    port = free_port()
    server = serve_on_device(device, core, command, port)
    try:
        answer = ask(port, "What is the capital of France?")
        record({f"answer {core}": answer})
        assert "Paris" in answer
    finally:
        stop(server)


@pytest.mark.parametrize("case", ["no archive", "not root"])
def test_a_root_that_cannot_be_made_is_one_line(case, tmp_path):
    if os.geteuid() != 0:
        _unavailable("needs root to run sysroot.sh as root and as another user")
    command = [SCRIPTS / "sysroot.sh", "trixie", tmp_path / "arm64"]
    env = dict(os.environ)
    if case == "no archive":
        env["ARM64_MIRROR"] = "http://127.0.0.1:9/debian"  # the discard port: nothing answers
        expected = "cannot make the arm64 root: Debian trixie's arm64 packages are not reachable at http://127.0.0.1:9"
    else:
        tmp_path.chmod(0o777)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        expected = "cannot make the arm64 root: needs root (binfmt_misc registration and chroot)"
    made = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 3, made.stderr
    assert made.stderr.strip().splitlines()[-1].startswith(expected), made.stderr
    assert not (tmp_path / "arm64" / "root").exists()
