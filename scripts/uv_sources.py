"""pip's configured package sources as uv flags, one a line: what scripts/install_lock.sh hands
uv so that it installs from exactly where pip would (uv reads no pip.conf and no PIP_* variable).

Reads `pip config list` (every scope pip merges: site, user, global files and PIP_* variables,
the latter shown as `:env:`); prints `--index-url=`, `--extra-index-url=` and `--find-links=`
flags, and `CERT=<path>` for pip's `cert` (uv takes it as SSL_CERT_FILE). Standard library only:
it runs before anything else is installed.

    python scripts/uv_sources.py            # runs `python -m pip config list` itself
    pip config list | python scripts/uv_sources.py -
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

LINE = re.compile(
    r"^(?P<scope>:env:|global|install)\.(?P<key>index-url|extra-index-url|find-links|cert)=(?P<value>.*)$"
)
PRECEDENCE = (":env:", "install", "global")  # pip: an environment variable over [install] over [global]


def uv_flags(config_list: str) -> list[str]:
    """The flags for `config_list`, the output of `pip config list`."""
    found: dict[str, dict[str, list[str]]] = {}
    for line in config_list.splitlines():
        m = LINE.match(line.strip())
        if m:
            value = ast.literal_eval(m["value"])  # pip prints each value as a Python string literal
            found.setdefault(m["key"], {})[m["scope"]] = str(value).split()

    def first(key: str) -> str | None:
        return next((v[0] for scope in PRECEDENCE if (v := found.get(key, {}).get(scope))), None)

    flags = []
    if index := first("index-url"):
        flags.append(f"--index-url={index}")
    for key in ("extra-index-url", "find-links"):  # lists: every scope's, in precedence order, once each
        seen: list[str] = []
        for scope in PRECEDENCE:
            seen += [v for v in found.get(key, {}).get(scope, []) if v not in seen]
        flags += [f"--{key}={v}" for v in seen]
    if cert := first("cert"):
        flags.append(f"CERT={cert}")
    return flags


def main(argv: list[str]) -> int:
    if argv[1:] == ["-"]:
        text = sys.stdin.read()
    else:
        run = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
        text = run.stdout
    print("\n".join(uv_flags(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
