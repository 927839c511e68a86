"""scripts/uv_sources.py: uv is handed exactly the package sources pip is configured with."""

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "uv_sources.py"
spec = importlib.util.spec_from_file_location("uv_sources", SCRIPT)
assert spec is not None and spec.loader is not None
uv_sources = importlib.util.module_from_spec(spec)
spec.loader.exec_module(uv_sources)

# `pip config list` on the machines this runs on (a file's [global] and PIP_* variables).
THIS_MACHINE = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.disable-pip-version-check='1'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
"""


def test_this_machines_sources_become_uv_flags_each_once():
    assert uv_sources.uv_flags(THIS_MACHINE) == [
        "--extra-index-url=file:///opt/pypi/simple",
        "--extra-index-url=file:///opt/pypi-more/simple",
        "--find-links=/opt/wheels",
        "CERT=/etc/ssl/certs/ca-certificates.crt",
    ]


def test_an_environment_variable_wins_over_install_over_global_for_single_values():
    text = (
        "global.index-url='https://global.example/simple'\n"
        "install.index-url='https://install.example/simple'\n"
        "global.cert='/global.pem'\n"
    )
    assert uv_sources.uv_flags(text) == ["--index-url=https://install.example/simple", "CERT=/global.pem"]
    text += ":env:.index-url='https://env.example/simple'\n"
    assert uv_sources.uv_flags(text)[0] == "--index-url=https://env.example/simple"


def test_lists_merge_across_scopes_and_other_keys_are_ignored():
    text = (
        "global.extra-index-url='https://a.example/simple'\n"
        ":env:.extra-index-url='https://b.example/simple https://a.example/simple'\n"
        "global.timeout='60'\n"
        "global.no-index='true'\n"
    )
    assert uv_sources.uv_flags(text) == [
        "--extra-index-url=https://b.example/simple",
        "--extra-index-url=https://a.example/simple",
    ]
    assert uv_sources.uv_flags("") == []


def test_the_script_reads_pip_config_list_on_stdin():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "-"], input=THIS_MACHINE, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == uv_sources.uv_flags(THIS_MACHINE)
