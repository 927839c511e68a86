#!/usr/bin/env bash
# Installs requirements.lock and clinie (editable) into an existing venv: `make setup` runs it.
#
# No resolver runs either way (--no-deps; a resolver would pull a multi-GB CUDA torch).
# Fast path: uv, pinned, fed the package sources pip is configured with (index, extra indexes,
# find-links, certificate), so it sees exactly what pip would. It unpacks and byte-compiles in
# parallel: about 30 s for the lock here against pip's 1 min 50 s. Byte-compiling at install
# matters: with PYTHONDONTWRITEBYTECODE set (as on these machines) nothing is compiled later, and
# every Ray worker would pay about 7 s more to import torch, transformers and Ray.
# Any failure of the fast path falls back to pip, which installs what is missing as before.
# CLINIE_INSTALLER=pip skips uv.
set -euo pipefail
venv=${1:?usage: scripts/install_lock.sh VENV}
py="$venv/bin/python"
UV_VERSION=0.13.10

# pip's configured sources as uv flags, one per line (pip merges every scope; so does this).
uv_sources() {
  "$py" - <<'EOF'
import ast, re, subprocess, sys

out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
found = {}
for line in out.splitlines():
    m = re.match(r"^(:env:|global|install)\.(index-url|extra-index-url|find-links|cert)=(.*)$", line)
    if m:
        found.setdefault(m[2], {})[m[1]] = ast.literal_eval(m[3]).split()
index = next((v for scope in (":env:", "install", "global") for v in found.get("index-url", {}).get(scope, [])), None)
if index:
    print(f"--index-url={index}")
for key in ("extra-index-url", "find-links"):
    seen = []
    for values in found.get(key, {}).values():
        seen += [v for v in values if v not in seen]
    for value in seen:
        print(f"--{key}={value}")
cert = next((v for scope in (":env:", "install", "global") for v in found.get("cert", {}).get(scope, [])), None)
if cert:
    print(f"CERT={cert}")
EOF
}

with_uv() {
  "$py" -m pip install -q "uv==$UV_VERSION" || return 1
  local flags=() line cert=""
  while IFS= read -r line; do
    case "$line" in
      CERT=*) cert=${line#CERT=} ;;
      *) flags+=("$line") ;;
    esac
  done < <(uv_sources)
  # pip takes the best match over all indexes; uv's default stops at the first that has a name.
  local uv=("$venv/bin/uv" pip install --quiet --python "$py" --no-deps --index-strategy unsafe-best-match)
  SSL_CERT_FILE=${SSL_CERT_FILE:-$cert} "${uv[@]}" "${flags[@]}" --compile-bytecode -r requirements.lock &&
    SSL_CERT_FILE=${SSL_CERT_FILE:-$cert} "${uv[@]}" "${flags[@]}" --no-build-isolation -e .
}

with_pip() {
  "$py" -m pip install -q --upgrade "pip>=24"
  "$py" -m pip install -q --no-deps -r requirements.lock
  "$py" -m pip install -q --no-deps --no-build-isolation -e .
}

if [ "${CLINIE_INSTALLER:-uv}" = uv ]; then
  if with_uv; then exit 0; fi
  echo "install_lock: uv could not install the lock; installing with pip instead (slower)" >&2
fi
with_pip
