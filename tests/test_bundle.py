"""`edgekit bundle`: the folder's files, requirements resolved for the Pi against the real package
index (these tests need network access to it), edgekit's own wheel installed into a fresh venv,
run.sh run for real with a fake `uname`, the systemd unit, and bad input as one line with exit 2."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.artifact import read_manifest
from edgekit.cli import cli
from edgekit.deploy.resolve import Pin, explain_pip_failure
from edgekit.deploy.target import bundle_target
from edgekit.device_profiles import parse_profile

RUNTIME = {"numpy", "onnxruntime", "tokenizers", "jinja2", "click"}
HEAVY = {"torch", "onnx", "transformers", "optimum"}
# Spelled out here rather than taken from edgekit, so the index is asked independently.
PI_WHEELS = [
    "--only-binary=:all:",
    "--implementation=cp",
    "--platform=manylinux_2_17_aarch64",
    "--platform=manylinux2014_aarch64",
    "--platform=manylinux_2_27_aarch64",
    "--platform=manylinux_2_28_aarch64",
    "--platform=manylinux_2_34_aarch64",
]
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module", autouse=True)
def _no_pip_cache():
    """Every resolution and download asks the index (no answers from pip's cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIP_NO_CACHE_DIR", "1")
        yield


def _bundle(*args: str):
    return CliRunner().invoke(cli, ["bundle", *args])


@pytest.fixture(scope="module")
def bundle(tiny_artifact, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny-pi"
    result = _bundle(str(tiny_artifact), "--target", "raspberry-pi-5", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    return out


def _pins(requirements: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, sha256) from a requirements file with one hash per pin."""
    text = requirements.read_text()
    found = re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", text, re.M)
    lines = [line for line in text.splitlines() if line and not line.lstrip().startswith(("#", "--hash"))]
    assert len(found) == len(lines), "every requirement is `name==version` followed by its hash"
    return {re.sub(r"[-_.]+", "-", name).lower(): (version, digest) for name, version, digest in found}


def _pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd)


def test_the_bundle_has_every_file(bundle, tiny_artifact):
    names = {p.name for p in bundle.iterdir()}
    assert names == {
        "model",
        "requirements.txt",
        "edgekit-0.1.0-py3-none-any.whl",
        "run.sh",
        "install.sh",
        "edgekit.service",
        "README.md",
    }
    manifest = read_manifest(bundle / "model")  # every file there, with its sha256
    assert {p.name for p in (bundle / "model").iterdir()} == {*manifest.files, "edgekit.json"}
    assert (bundle / "model" / "edgekit.json").read_bytes() == (tiny_artifact / "edgekit.json").read_bytes()
    assert os.access(bundle / "run.sh", os.X_OK) and os.access(bundle / "install.sh", os.X_OK)
    assert not list(bundle.parent.glob(".tiny-pi.*")), "the staging folder is gone"


def test_readme_has_three_commands_to_run_it(bundle):
    readme = (bundle / "README.md").read_text()
    block = readme.split("## Run it")[1].split("```console\n")[1].split("```")[0]
    commands = block.strip().splitlines()
    assert len(commands) == 3
    assert commands[0].startswith("scp -r tiny-pi ")
    assert "sudo ./tiny-pi/install.sh" in commands[1]
    assert commands[2].startswith("curl http://") and ":8080/" in commands[2]
    assert "/opt/tiny-pi" in readme and "requirements.txt" in readme and "model/" in readme


def _weight_file_bytes(model: Path) -> dict[str, int]:
    """The bytes of each initializer model.onnx keeps in its weight file (the few it holds inline,
    under ONNX's size threshold, are left out: 602 bytes of SmolLM2's 78 MB, 6% of the tiny model's)."""
    import onnx

    graph = onnx.load(model, load_external_data=False).graph
    sizes = {}
    for tensor in graph.initializer:
        external = {entry.key: entry.value for entry in tensor.external_data}
        if external:
            sizes[tensor.name] = int(external["length"])
    return sizes


def test_readme_estimates_decode_speed_from_the_bytes_each_token_reads(bundle, tiny_artifact):
    """Bytes per token against model.onnx's own weight-file initializers: all of them but the
    embedding table's, of which one row; the README's tokens/s is the Pi 5's bandwidth over that."""
    from edgekit.artifact import read_manifest
    from edgekit.deploy.estimate import bytes_per_token

    sizes = _weight_file_bytes(tiny_artifact / "model.onnx")
    table = sum(n for name, n in sizes.items() if name.startswith("model.embed_tokens."))
    vocab = read_manifest(tiny_artifact).spec.vocab_size
    expected = sum(sizes.values()) - table + table // vocab
    manifest = read_manifest(tiny_artifact)
    got = bytes_per_token(manifest, (tiny_artifact / "model.onnx.data").stat().st_size)
    assert abs(got - expected) / expected < 0.01, (got, expected)
    readme = (bundle / "README.md").read_text()
    speed = re.search(r"at most about \*\*(\d+) tokens/s\*\* on a Raspberry Pi 5, an estimate", readme)
    assert speed and int(speed.group(1)) == round(9.5e9 / got)
    assert "4.6-4.9 tokens/s" in readme  # the published figure, for scale
    assert "`edgekit bundle --wheels` states their size" in readme  # no wheels, no install size


def test_a_profile_without_bandwidth_gets_no_speed_estimate(tiny_artifact, tmp_path):
    import edgekit

    text = (Path(edgekit.__file__).parent / "device_profiles" / "raspberry-pi-5.toml").read_text()
    custom = tmp_path / "board.toml"
    custom.write_text(re.sub(r"(?m)^memory_bandwidth = .*$", "", text).replace('"raspberry-pi-5"', '"board"'))
    result = _bundle(str(tiny_artifact), "--target", str(custom), "-o", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "Decode speed: not estimated (the profile `board` gives no memory bandwidth)" in readme


def test_requirements_pin_the_runtime_with_hashes_and_nothing_heavy(bundle):
    pins = _pins(bundle / "requirements.txt")
    assert RUNTIME <= set(pins)
    assert not HEAVY & set(pins)
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version) for version, _ in pins.values())


def test_the_pinned_onnxruntime_is_an_aarch64_wheel_on_the_index(bundle, tmp_path):
    version, digest = _pins(bundle / "requirements.txt")["onnxruntime"]
    requirement = tmp_path / "onnxruntime.txt"
    requirement.write_text(f"onnxruntime=={version} --hash=sha256:{digest}\n")
    download = tmp_path / "wheels"
    done = _pip(
        "download", "--no-deps", "--require-hashes", *PI_WHEELS, "--python-version=3.13", "-r", str(requirement),
        "-d", str(download),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = download.iterdir()
    assert "aarch64" in wheel.name and ("cp313" in wheel.name or "abi3" in wheel.name)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == digest


def test_wheels_download_checks_every_pinned_hash(bundle, tmp_path):
    from edgekit.deploy.resolve import download_wheels
    from edgekit.errors import EdgekitError

    target = bundle_target("raspberry-pi-5")
    pinned = _pins(bundle / "requirements.txt")
    pins = [Pin(name, *pinned[name], f"{name}.whl") for name in ("click", "markupsafe")]  # one pure, one aarch64
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{p.name}=={p.version} --hash=sha256:{p.sha256}\n" for p in pins))
    download_wheels(requirements, pins, target, tmp_path / "wheels", lambda line: None)
    names = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert len(names) == 2 and "aarch64" in names[1] and names[1].startswith("markupsafe-")
    wrong = [Pin("click", pins[0].version, "0" * 64, "click.whl")]
    requirements.write_text(f"click=={pins[0].version} --hash=sha256:{'0' * 64}\n")
    with pytest.raises(EdgekitError, match=f"click=={pins[0].version}: the package index now serves a file"):
        download_wheels(requirements, wrong, target, tmp_path / "wrong", lambda line: None)


def test_edgekit_wheel_holds_the_package_and_its_data(bundle):
    import edgekit
    from edgekit.deploy.wheel import check_wheel

    wheel = bundle / "edgekit-0.1.0-py3-none-any.whl"
    check_wheel(wheel)
    package = Path(edgekit.__file__).parent
    expected = {
        f"edgekit/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read("edgekit-0.1.0.dist-info/METADATA").decode()
        entry_points = z.read("edgekit-0.1.0.dist-info/entry_points.txt").decode()
    assert {n for n in names if not n.startswith("edgekit-0.1.0.dist-info/")} == expected
    assert "edgekit/device_profiles/raspberry-pi-5.toml" in names and "edgekit/py.typed" in names
    assert not any(n.startswith("tests/") or "__pycache__" in n for n in names)
    requires = {re.split(r"[<>=!~ ;]", line.split(": ", 1)[1])[0].lower() for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")}  # fmt: skip
    assert requires == RUNTIME
    assert "edgekit = edgekit.cli:main" in entry_points


def test_edgekit_wheel_installs_into_a_fresh_venv(bundle, tmp_path):
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    wheel = bundle / "edgekit-0.1.0-py3-none-any.whl"
    done = _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    assert done.returncode == 0, done.stdout + done.stderr
    # edgekit imports numpy and friends: take them from this environment (a plain path, so its
    # .pth files, among them any editable edgekit, are not processed)
    site = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p, "numpy").is_dir()][0]
    Path(site.decode().strip(), "runtime-deps.pth").write_text(ours + "\n")
    probe = (
        "import json, edgekit, importlib.resources as r; from edgekit.device_profiles import load_profile; "
        "print(json.dumps([edgekit.__file__, sorted(f.name for f in r.files('edgekit.device_profiles').iterdir() "
        "if f.name.endswith('.toml')), load_profile('raspberry-pi-5').bundle.python]))"
    )
    where, tomls, pi_python = json.loads(subprocess.check_output([str(python), "-c", probe], cwd=tmp_path))
    assert where.startswith(str(fresh))
    assert {"raspberry-pi-5.toml", "raspberry-pi-4.toml", "generic-x86-64-cpu.toml"} <= set(tomls)
    assert pi_python == "3.13"
    commands = subprocess.run([str(fresh / "bin" / "edgekit"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert commands.returncode == 0 and "bundle" in commands.stdout and "serve" in commands.stdout


def test_launcher_scripts_parse(bundle):
    for script in ("run.sh", "install.sh"):
        done = subprocess.run(["bash", "-n", str(bundle / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    run = (bundle / "run.sh").read_text()
    assert '--host "${EDGEKIT_HOST:-0.0.0.0}" --port "${EDGEKIT_PORT:-8080}" --profile raspberry-pi-5' in run
    assert "--require-hashes" in run and "--no-deps" in run


def test_the_systemd_unit(bundle, tmp_path):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((bundle / "edgekit.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"] == "/opt/tiny-pi/run.sh" and service["WorkingDirectory"] == "/opt/tiny-pi"
    assert service["Restart"] == "on-failure" and service["User"] == "edgekit"
    assert unit["Install"]["WantedBy"] == "multi-user.target" and unit["Unit"]["Description"]
    if shutil.which("systemd-analyze") is None:
        return
    # where install.sh puts it on the device, the unit's paths exist; here, point them at the bundle
    here = tmp_path / "edgekit.service"
    here.write_text((bundle / "edgekit.service").read_text().replace("/opt/tiny-pi", str(bundle)))
    done = subprocess.run(["systemd-analyze", "verify", str(here)], capture_output=True, text=True)
    assert done.returncode == 0 and str(here) not in done.stdout + done.stderr, done.stdout + done.stderr


def test_run_sh_installs_once_then_starts_the_server(tiny_artifact, tmp_path):
    """run.sh for real on this machine: a bundle for this Python, its requirements cut down to click
    (the rest are aarch64 wheels), offline from wheels/, and a `uname` that says aarch64."""
    out = tmp_path / "pi"
    result = _bundle(str(tiny_artifact), "--target", "raspberry-pi-5", "-o", str(out), "--python", HOST_PYTHON)
    assert result.exit_code == 0, result.output
    requirements = out / "requirements.txt"
    version, digest = _pins(requirements)["click"]
    requirements.write_text(f"click=={version} \\\n    --hash=sha256:{digest}\n")
    done = _pip("download", "--no-deps", "--require-hashes", "-r", str(requirements), "-d", str(out / "wheels"))
    assert done.returncode == 0, done.stdout + done.stderr

    wrong_arch = subprocess.run([str(out / "run.sh")], capture_output=True, text=True)
    assert wrong_arch.returncode == 1 and "this bundle is for Linux aarch64" in wrong_arch.stderr

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text("#!/bin/sh\necho aarch64\n")
    (fake / "uname").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "EDGEKIT_PYTHON": sys.executable}
    first = subprocess.run([str(out / "run.sh"), "--install-only"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    listed = subprocess.check_output([str(out / ".venv/bin/python"), "-m", "pip", "list", "--format=json"])
    assert {"click", "edgekit"} <= {p["name"].lower() for p in json.loads(listed)}

    edgekit = out / ".venv" / "bin" / "edgekit"  # stands in for the server: says how it was started
    edgekit.write_text('#!/bin/sh\necho "$@"\n')
    again = subprocess.run(
        [str(out / "run.sh"), "--threads", "2"], capture_output=True, text=True, env={**env, "EDGEKIT_PORT": "9001"}
    )
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr  # the first run's .venv is reused
    assert again.stdout.split() == [
        "serve", str(out / "model"), "--host", "0.0.0.0", "--port", "9001", "--profile", "raspberry-pi-5",
        "--threads", "2",
    ]  # fmt: skip


def test_a_profile_file_as_target(tiny_artifact, tmp_path, monkeypatch):
    import edgekit.deploy.bundle as bundle_module

    pin = Pin("click", "8.1.7", "0" * 64, "click-8.1.7-py3-none-any.whl", (), ("edgekit",))
    monkeypatch.setattr(bundle_module, "resolve", lambda requirements, target, on_line, extras=(): [pin])
    profile = tmp_path / "my-board.toml"
    profile.write_text(
        'name = "my-board"\ndescription = "My board: an aarch64 SBC"\n'
        '[bundle]\npython = "3.12"\nplatform = "manylinux_2_31_aarch64"\n'
    )
    out = tmp_path / "board"
    result = _bundle(str(tiny_artifact), "--target", str(profile), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "profile.toml").read_text() == profile.read_text()
    assert '--profile "$here/profile.toml"' in (out / "run.sh").read_text()
    assert "click==8.1.7" in (out / "requirements.txt").read_text()


def _damaged(artifact: Path, tmp_path: Path, **manifest_changes) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "edgekit.json").read_text())
    (copy / "edgekit.json").write_text(json.dumps({**manifest, **manifest_changes}))
    return copy


BAD_INPUT = {
    "missing": (lambda a, m, t: ["/no/such/artifact"], "/no/such/artifact: no such artifact folder"),
    "checkpoint": (lambda a, m, t: [str(m["llama"])], "a model checkpoint, not an edgekit artifact"),
    "mlx": (
        lambda a, m, t: [str(_damaged(a, t, format="mlx", flavor=None))],
        "an MLX artifact, but raspberry-pi-5 runs ONNX Runtime; export an ONNX one with "
        "`edgekit export SOURCE -o OUT --profile raspberry-pi-5`",
    ),
    "cuda": (
        lambda a, m, t: [str(_damaged(a, t, flavor="cuda"))],
        "an ONNX cuda artifact, but raspberry-pi-5 runs cpu ones",
    ),
    "unknown target": (
        lambda a, m, t: [str(a), "--target", "raspberry-pi-9"],
        "no device profile named 'raspberry-pi-9'; bundle targets: raspberry-pi-4, raspberry-pi-5",
    ),
    "not a bundle target": (
        lambda a, m, t: [str(a), "--target", "apple-silicon"],
        "profile apple-silicon cannot be a bundle target (it has no [bundle] table); bundle targets: raspberry-pi-4",
    ),
    "python": (lambda a, m, t: [str(a), "--python", "3"], "--python 3: expected a CPython version like 3.13"),
    "output is the artifact": (
        lambda a, m, t: [str(_damaged(a, t)), "-o", str(t / "artifact"), "--overwrite"],
        "the bundle would replace the artifact",
    ),
    "bundle name": (lambda a, m, t: [str(a), "-o", str(t / "my bundle")], "name the bundle folder with letters"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tiny_artifact, tiny_models, tmp_path):
    make_args, message = BAD_INPUT[case]
    args = make_args(tiny_artifact, tiny_models, tmp_path)
    if "--target" not in args:
        args += ["--target", "raspberry-pi-5"]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    result = _bundle(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    out = Path(args[args.index("-o") + 1])
    if case == "output is the artifact":
        assert read_manifest(out), "the artifact is untouched"
    else:
        assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_a_damaged_artifact_fails_before_anything_is_written(tiny_artifact, tmp_path):
    artifact = _damaged(tiny_artifact, tmp_path)
    data = artifact / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[100] ^= 0xFF
    data.write_bytes(bytes(blob))
    out = tmp_path / "out"
    result = _bundle(str(artifact), "--target", "raspberry-pi-5", "-o", str(out))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {data}: sha256 differs from edgekit.json")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_a_python_without_wheels_names_the_package(tiny_artifact, tmp_path):
    out = tmp_path / "out"
    result = _bundle(str(tiny_artifact), "--target", "raspberry-pi-5", "-o", str(out), "--python", "3.99")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert re.search(r"error: (numpy|onnxruntime) has no wheel for Linux aarch64, CPython 3\.99", errors[0]), errors
    assert "--python" in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_an_existing_folder_needs_overwrite(bundle, tiny_artifact):
    before = sorted(p.name for p in bundle.iterdir())
    result = _bundle(str(tiny_artifact), "--target", "raspberry-pi-5", "-o", str(bundle))
    assert result.exit_code == 2 and "already exists; choose another output folder or pass --overwrite" in result.output
    assert sorted(p.name for p in bundle.iterdir()) == before


def test_python_311_resolves_for_bookworm():
    from edgekit.deploy.resolve import resolve
    from edgekit.deploy.wheel import installed_project

    pins = resolve(list(installed_project().runtime_requirements), bundle_target("raspberry-pi-4", "3.11"))
    names = {p.key for p in pins}
    assert RUNTIME <= names and not HEAVY & names
    assert all("cp311" in p.filename or "abi3" in p.filename or "none-any" in p.filename for p in pins)


def test_markers_are_evaluated_for_the_target_not_this_machine(monkeypatch):
    """pip resolves with this machine's markers; the walk keeps what the target needs and asks pip
    again for what only the target needs."""
    import edgekit.deploy.resolve as resolve_module

    needs = ('old; python_version < "3.12"', 'x86; platform_machine == "x86_64"')
    universe = {
        "app": Pin("app", "1.0", "a" * 64, "app.whl", needs),
        "old": Pin("old", "2.0", "b" * 64, "old.whl"),
        "x86": Pin("x86", "3.0", "c" * 64, "x86.whl"),
    }
    asked: list[list[str]] = []

    def fake_pip(requirements, target, on_line):
        asked.append(requirements)
        if any(r.startswith("old") for r in requirements):  # what pip on a 3.13 x86 machine would give
            return universe
        return {k: v for k, v in universe.items() if k != "old"}

    monkeypatch.setattr(resolve_module, "_pip_resolve", fake_pip)
    monkeypatch.setattr(resolve_module, "require_pip", lambda: None)
    pins = resolve_module.resolve(["app"], bundle_target("raspberry-pi-5", "3.11"))
    assert [(p.name, p.via) for p in pins] == [("app", ("edgekit",)), ("old", ("app",))]
    assert asked == [["app"], ["app", "old"]]


def test_pip_failures_become_one_line():
    target = bundle_target("raspberry-pi-5")
    transitive = explain_pip_failure(
        [
            "ERROR: Could not find a version that satisfies the requirement hf-xet>=1.6 (from huggingface-hub) "
            "(from versions: none)",
            "ERROR: No matching distribution found for hf-xet>=1.6",
        ],
        target,
    )
    assert str(transitive).startswith("hf-xet (needed by huggingface-hub) has no wheel for Linux aarch64, CPython 3.13")
    offline = explain_pip_failure(
        [
            "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(...)': /simple/numpy/",
            "ERROR: Could not find a version that satisfies the requirement numpy (from versions: none)",
        ],
        target,
    )
    assert "could not reach the package index" in str(offline)
    conflict = explain_pip_failure(["ERROR: ResolutionImpossible: for help visit https://pip.pypa.io"], target)
    assert str(conflict).startswith("pip cannot resolve edgekit's runtime for Linux aarch64, CPython 3.13")
    assert all("\n" not in str(e) for e in (transitive, offline, conflict))


def test_bundle_table_in_profiles():
    target = bundle_target("raspberry-pi-5")
    assert target.python == "3.13" and target.arch == "aarch64"
    tags = target.platform_tags()
    assert tags[0] == "manylinux_2_36_aarch64" and {"manylinux_2_17_aarch64", "manylinux2014_aarch64"} <= set(tags)
    head = 'name = "x"\ndescription = "y"\n[bundle]\n'
    for body, message in [
        ('python = "3.x"\nplatform = "manylinux_2_36_aarch64"', "bundle.python: '3.x' is not of the form"),
        ('python = "3.13"', "bundle.platform: missing"),
        ('python = "3.13"\nplatform = "linux_armv7l"', "bundle.platform: 'linux_armv7l' is not of the form"),
    ]:
        with pytest.raises(Exception, match=re.escape(message)):
            parse_profile(head + body, "x.toml")
