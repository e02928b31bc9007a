"""The files that start a bundle on the device: run.sh (prepares .venv once, then `edgekit serve`),
install.sh (installs the folder as the systemd service), edgekit.service, and the bundle's README."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .estimate import Estimate
from .target import Target

MODEL_FOLDER = "model"
SERVICE = "edgekit.service"
SERVICE_USER = "edgekit"
PORT = 8080


@dataclass(frozen=True)
class Launch:
    """What the launcher files need to know about one bundle."""

    name: str  # the bundle folder's name; installed as /opt/NAME
    model: str  # the model's name, for people; one line
    target: Target
    wheel: str  # edgekit's wheel file name
    profile_argument: str  # what run.sh passes as `edgekit serve --profile`

    @property
    def home(self) -> str:
        return f"/opt/{self.name}"


def _fill(template: str, **values: str) -> str:
    text = template
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.search(r"@[A-Z_]+@", text)
    assert left is None, f"template placeholder {left.group(0)} not filled"
    return text


_RUN_SH = r"""#!/usr/bin/env bash
# Serves @MODEL@ over HTTP (OpenAI's API) with `edgekit serve`. Made by `edgekit bundle` for
# @TARGET@: @PLATFORM@. The first run creates .venv beside this file and installs the
# pinned packages into it (from wheels/ when the bundle has it); later runs start at once.
#   EDGEKIT_HOST, EDGEKIT_PORT  the address to listen on (default 0.0.0.0 and @PORT@)
#   EDGEKIT_PYTHON              the Python that makes .venv (default python3; must be @PYTHON@)
#   ./run.sh --install-only     prepare .venv and exit; other arguments go to `edgekit serve`
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${EDGEKIT_PYTHON:-python3}"
stamp="$(cat "$here/requirements.txt" "$here/@WHEEL@" | sha256sum | cut -d' ' -f1)"

fail() {
    echo "run.sh: $*" >&2
    exit 1
}

install_packages() {
    [ "$(uname -m)" = "@ARCH@" ] ||
        fail "this bundle is for Linux @ARCH@ (64-bit Raspberry Pi OS); this machine is $(uname -m)"
    command -v "$python" >/dev/null || fail "$python not found; install Python @PYTHON@"
    local version
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ "$version" = "@PYTHON@" ] ||
        fail "the bundle's packages are for Python @PYTHON@ but $python is $version;" \
            "make the bundle for it: edgekit bundle ... --python $version"
    echo "run.sh: installing the runtime into $venv (first run only)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" || fail "could not create $venv; on Debian: sudo apt install python3-venv"
    local pip=("$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --no-input)
    local source=()
    if [ -d "$here/wheels" ]; then
        source=(--no-index --find-links "$here/wheels")
    fi
    "${pip[@]}" "${source[@]}" --require-hashes --only-binary=:all: --requirement "$here/requirements.txt"
    "${pip[@]}" --no-index --no-deps "$here/@WHEEL@"
    echo "$stamp" >"$venv/.bundle-stamp"
}

if [ "$(cat "$venv/.bundle-stamp" 2>/dev/null)" != "$stamp" ]; then
    install_packages
fi
if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi
exec "$venv/bin/edgekit" serve "$here/@MODEL_FOLDER@" \
    --host "${EDGEKIT_HOST:-0.0.0.0}" --port "${EDGEKIT_PORT:-@PORT@}" --profile @PROFILE@ "$@"
"""


def run_sh(launch: Launch) -> str:
    return _fill(
        _RUN_SH,
        MODEL=launch.model,
        TARGET=launch.target.name,
        PLATFORM=launch.target.describe(),
        PORT=str(PORT),
        PYTHON=launch.target.python,
        ARCH=launch.target.arch,
        WHEEL=launch.wheel,
        MODEL_FOLDER=MODEL_FOLDER,
        PROFILE=launch.profile_argument,
    )


_INSTALL_SH = r"""#!/usr/bin/env bash
# Installs this bundle as the systemd service @SERVICE@: copies the folder to @HOME@, runs it as
# the system user @USER@, installs its Python packages and starts the server. Run it with sudo;
# running it again (from a newer copy of the bundle) replaces the installation.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="@HOME@"

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run it as root: sudo $0"
missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ -e /usr/lib/@ARCH@-linux-gnu/libstdc++.so.6 ] || missing+=(libstdc++6) # numpy's and onnxruntime's wheels link it
if [ ${#missing[@]} -gt 0 ]; then
    { apt-get update -qq && apt-get install -y "${missing[@]}"; } ||
        fail "the runtime needs ${missing[*]}, which apt-get could not install here: sudo apt install ${missing[*]}"
fi
id -u @USER@ >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin @USER@
systemctl stop @SERVICE@ 2>/dev/null || true
if [ "$here" != "$home" ]; then
    rm -rf "$home"
    mkdir -p "$(dirname "$home")"
    cp -R "$here" "$home"
    rm -rf "$home/.venv" # a .venv holds the paths of where it was made
fi
chown -R @USER@:@USER@ "$home"
runuser -u @USER@ -- env HOME=/nonexistent "$home/run.sh" --install-only # the service's HOME too
install -D -m 644 "$home/@SERVICE@" /etc/systemd/system/@SERVICE@
if [ ! -d /run/systemd/system ]; then # an SD-card image being made in a chroot, a container
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sf /etc/systemd/system/@SERVICE@ /etc/systemd/system/multi-user.target.wants/@SERVICE@
    echo "install.sh: systemd is not running here, so @SERVICE@ is enabled for the next boot, not started;" \
        "to serve now: runuser -u @USER@ -- $home/run.sh" >&2
    exit 0
fi
systemctl daemon-reload
systemctl enable --now @SERVICE@
echo "install.sh: @SERVICE@ started; waiting for the model to load" >&2
health='import urllib.request; urllib.request.urlopen("http://127.0.0.1:@PORT@/health", timeout=2)'
for _ in $(seq 120); do
    if python3 -c "$health" 2>/dev/null; then
        echo "install.sh: serving on port @PORT@" >&2
        exit 0
    fi
    sleep 1
done
fail "the server does not answer on port @PORT@ yet; see: journalctl -u @SERVICE@"
"""


def install_sh(launch: Launch) -> str:
    return _fill(
        _INSTALL_SH, SERVICE=SERVICE, HOME=launch.home, USER=SERVICE_USER, PORT=str(PORT), ARCH=launch.target.arch
    )


_UNIT = """# @MODEL@ served over HTTP (OpenAI's API) by edgekit; made by `edgekit bundle`. install.sh copies
# the bundle to @HOME@ and installs this file as /etc/systemd/system/@SERVICE@.
# Another port: sudo systemctl edit @SERVICE@, then [Service] Environment=EDGEKIT_PORT=9000
[Unit]
Description=edgekit server: @MODEL@
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=@USER@
Group=@USER@
WorkingDirectory=@HOME@
Environment=EDGEKIT_HOST=0.0.0.0
Environment=EDGEKIT_PORT=@PORT@
ExecStart=@HOME@/run.sh
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(launch: Launch) -> str:
    description = launch.model.replace("%", "%%")  # systemd expands %-specifiers in Description=
    return _fill(_UNIT, MODEL=description, HOME=launch.home, SERVICE=SERVICE, USER=SERVICE_USER, PORT=str(PORT))


_README = """# @NAME@

@MODEL@ as an OpenAI-compatible server on a @TARGET_DESCRIPTION@. Made by `edgekit bundle`
for the device profile `@TARGET@`: Linux @ARCH@ (on a Raspberry Pi: 64-bit Raspberry Pi OS) with
Python @PYTHON@ (`python3 --version` on the device must say @PYTHON@.x).

## Run it

From the folder that holds `@NAME@`, with your user name and the device's address:

```console
scp -r @NAME@ pi@raspberrypi.local:
ssh -t pi@raspberrypi.local sudo ./@NAME@/install.sh
curl http://raspberrypi.local:@PORT@/v1/models
```

1. copies the bundle to the device's home folder;
2. installs it to `@HOME@` as the systemd service `@SERVICE@` (user `@USER@`), installs its Python
   packages into `@HOME@/.venv` (@SOURCE@; a few minutes the first time) and starts it (the
   copy in your home folder is no longer needed then);
3. asks the server which model it serves.

The chat page is at http://raspberrypi.local:@PORT@/ and the API at
http://raspberrypi.local:@PORT@/v1 (any OpenAI client: `base_url="http://raspberrypi.local:@PORT@/v1"`).

## What to expect

@EXPECT@

## Contents

| file | what it is |
|---|---|
| `@MODEL_FOLDER@/` | the edgekit artifact (ONNX, @FLAVOR@ flavor); `edgekit.json` lists every file's sha256 |
| `requirements.txt` | the runtime's packages for Linux @ARCH@, CPython @PYTHON@: exact versions, sha256 each |
| `@WHEEL@` | edgekit itself |
@WHEELS_ROW@| `run.sh` | @RUN_SH_ROW@ |
| `install.sh` | copies the folder to `@HOME@` and installs, enables and starts `@SERVICE@` |
| `@SERVICE@` | the systemd unit: runs `@HOME@/run.sh` as `@USER@`, restarts it when it fails |

## Operate

```console
journalctl -u edgekit -f               # the server's log
sudo systemctl restart edgekit         # or stop, start, disable
sudo systemctl edit edgekit            # e.g. [Service] Environment=EDGEKIT_PORT=9000
EDGEKIT_PORT=9000 ./run.sh             # without systemd, in the foreground
```
"""


_FOR_SCALE = "for scale, Ollama decodes Llama-3.2-3B (Q4_K_M, 2.0 GB) at 4.6-4.9 tokens/s on a Raspberry Pi 5"


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:.0f} MB"


def expectations(
    launch: Launch, estimate: Estimate, model_bytes: int, bundle_bytes: int, runtime_bytes: int | None
) -> str:
    """The README's speed estimate and install size, as Markdown list items."""
    board = launch.target.profile.description.split(":")[0]
    per_token = _mb(estimate.bytes_per_token)
    if estimate.tokens_per_second is None:
        speed = (
            f"- Decode speed: not estimated (the profile `{launch.target.name}` gives no memory bandwidth); "
            f"each token reads {per_token} of weights."
        )
    else:
        speed = (
            f"- Decode speed: at most about **{estimate.tokens_per_second:.0f} tokens/s** on a {board}, an "
            f"estimate, not a measurement: each token reads the model's {per_token} of weights, and "
            f"the board reads memory at about {estimate.bandwidth:g} GB/s in a decode loop (the profile's "
            f"`memory_bandwidth`). The KV cache adds {_mb(estimate.kv_bytes_per_1k)} per 1000 tokens "
            f"of context, and a small model is held back by the CPU before memory; {_FOR_SCALE}."
        )
    if runtime_bytes is None:
        size = (
            f"- Install size: `{launch.home}` holds this folder ({_mb(model_bytes)} of it the model) and the "
            f"runtime's packages, downloaded into `{launch.home}/.venv` on the first run "
            "(`edgekit bundle --wheels` states their size)."
        )
    else:
        size = (
            f"- Install size: about {_mb(bundle_bytes + runtime_bytes)} in `{launch.home}`: this folder "
            f"({_mb(bundle_bytes)}, the model {_mb(model_bytes)} and the wheels) and the runtime's packages "
            f"unpacked into `.venv` ({_mb(runtime_bytes)} before their bytecode)."
        )
    return f"{speed}\n{size}"


def readme(launch: Launch, flavor: str, has_wheels: bool, expect: str) -> str:
    source = "from `wheels/`, offline" if has_wheels else "downloaded from PyPI"
    wheels_row = "| `wheels/` | every pinned wheel, so the device installs offline |\n" if has_wheels else ""
    return _fill(
        _README,
        NAME=launch.name,
        MODEL=launch.model,
        TARGET=launch.target.name,
        TARGET_DESCRIPTION=launch.target.profile.description.split(":")[0],
        ARCH=launch.target.arch,
        PYTHON=launch.target.python,
        PORT=str(PORT),
        HOME=launch.home,
        SERVICE=SERVICE,
        USER=SERVICE_USER,
        SOURCE=source,
        MODEL_FOLDER=MODEL_FOLDER,
        FLAVOR=flavor,
        WHEEL=launch.wheel,
        WHEELS_ROW=wheels_row,
        EXPECT=expect,
        RUN_SH_ROW=(
            f"prepares `.venv` on its first run, then runs `edgekit serve {MODEL_FOLDER} --profile "
            f"{launch.target.name}` on 0.0.0.0:{PORT} (`EDGEKIT_HOST`, `EDGEKIT_PORT` change it)"
        ),
    )
