#!/usr/bin/env bash
# Installs requirements.lock and clinie (editable) into an existing venv: `make setup` runs it.
#
# No resolver runs either way (--no-deps; a resolver would pull a multi-GB CUDA torch).
# Fast path: uv, pinned, fed the package sources pip is configured with (index, extra indexes,
# find-links, certificate: scripts/uv_sources.py), so it installs from where pip would. It
# downloads, unpacks and byte-compiles in parallel: the lock in 65 s with an empty uv cache (a new
# machine) and about 35 s with a warm one, against pip's 1 min 50 s, on 2 cores. Byte-compiling
# at install matters: with PYTHONDONTWRITEBYTECODE set (as on these machines) nothing is compiled
# later, and every process that imports torch, transformers and Ray (each Ray worker) would pay
# about 7 s more.
# Any failure of the fast path falls back to pip, which installs what is missing as before.
# CLINIE_INSTALLER=pip skips uv.
set -euo pipefail
venv=${1:?usage: scripts/install_lock.sh VENV}
py="$venv/bin/python"
UV_VERSION=0.13.10

with_uv() {
  "$py" -m pip install -q "uv==$UV_VERSION" || return 1
  local flags=() env=() line
  while IFS= read -r line; do
    case "$line" in
      CERT=*) [ -z "${SSL_CERT_FILE:-}" ] && env=("SSL_CERT_FILE=${line#CERT=}") ;;
      ?*) flags+=("$line") ;;
    esac
  done < <("$py" scripts/uv_sources.py)
  # pip takes the best match over all indexes; uv's default stops at the first that has a name.
  local uv=(env "${env[@]}" "$venv/bin/uv" pip install --quiet --python "$py" --no-deps
    --index-strategy unsafe-best-match "${flags[@]}")
  "${uv[@]}" --compile-bytecode -r requirements.lock && "${uv[@]}" --no-build-isolation -e .
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
