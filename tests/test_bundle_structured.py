"""`edgekit bundle --with structured`: llguidance is resolved for the Pi and pinned with a hash next to
the runtime; an unknown or development-only extra is one line with exit code 2."""

from __future__ import annotations

import os

import pytest
from test_bundle import RUNTIME, _bundle, _pins

from edgekit.deploy.wheel import installed_project


def test_with_structured_pins_llguidance(tiny_artifact, tmp_path):
    if "structured" not in installed_project().extras:
        if os.environ.get("CI"):
            raise AssertionError("the installed edgekit has no structured extra")
        pytest.skip("the installed edgekit's metadata predates the structured extra; reinstall it (make test does)")
    out = tmp_path / "tiny-pi"
    result = _bundle(str(tiny_artifact), "--target", "raspberry-pi-5", "-o", str(out), "--with", "structured")
    assert result.exit_code == 0, result.output
    pins = _pins(out / "requirements.txt")
    assert "llguidance" in pins and RUNTIME <= set(pins)
    assert "runtime + structured for raspberry-pi-5" in (out / "requirements.txt").read_text()


@pytest.mark.parametrize(("extra", "needle"), [("nope", "no optional part 'nope'"), ("dev", "no optional part 'dev'")])
def test_unknown_extras_are_one_line_and_exit_2(tiny_artifact, tmp_path, extra, needle):
    result = _bundle(str(tiny_artifact), "--target", "raspberry-pi-5", "-o", str(tmp_path / "b"), "--with", extra)
    assert result.exit_code == 2 and needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
