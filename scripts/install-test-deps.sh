#!/usr/bin/env bash
# Install what the client-compatibility tests (tests/python) need:
#   Debian: kcat (CLI client), cmake + libcurl4-openssl-dev (build deps for
#           crates that compile librdkafka, e.g. rdkafka's cmake-build feature),
#           and what librdkafka's own test runner links (scripts/librdkafka-suite)
#   PyPI:   kafka-python, confluent-kafka (bundles librdkafka), aiokafka,
#           pytest, and the codec libraries kafka-python needs for lz4, zstd
#           and snappy, and cryptography (certificates for the TLS tests)
#   npm:    kafkajs into tests/js/node_modules (node and npm from Debian if
#           missing)
#
# Idempotent and quiet when everything is already present. Meant to run as
# root on a fresh Debian 12 machine (CI); uses sudo for apt when not root.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

APT_PACKAGES=(kcat cmake libcurl4-openssl-dev libssl-dev libsasl2-dev libzstd-dev liblz4-dev zlib1g-dev pkg-config)
# "pip-name:import-name"
PIP_PACKAGES=(kafka-python:kafka confluent-kafka:confluent_kafka aiokafka:aiokafka pytest:pytest lz4:lz4.frame zstandard:zstandard python-snappy:snappy cryptography:cryptography)

PYTHON="${PYTHON:-python3}"

log() { echo "install-test-deps: $*" >&2; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

# --- Debian packages -------------------------------------------------------
missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    # dpkg -s succeeds for removed-but-not-purged packages too, so check state.
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [ "$status" != "install ok installed" ]; then
        missing_apt+=("$pkg")
    fi
done

if [ "${#missing_apt[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing_apt[*]}"
    apt_install "${missing_apt[@]}"
fi

# --- Python packages -------------------------------------------------------
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "$PYTHON not found; installing python3 and python3-pip"
    apt_install python3 python3-pip
fi

missing_pip=()
for spec in "${PIP_PACKAGES[@]}"; do
    pip_name="${spec%%:*}"
    import_name="${spec##*:}"
    if ! "$PYTHON" -c "import ${import_name}" >/dev/null 2>&1; then
        missing_pip+=("$pip_name")
    fi
done

if [ "${#missing_pip[@]}" -gt 0 ]; then
    log "installing Python packages: ${missing_pip[*]}"
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    pip_args=(install --quiet --disable-pip-version-check)
    # Debian's system python is "externally managed" (PEP 668); a pyenv or
    # venv python is not. Only pass the override when pip knows it.
    if "$PYTHON" -m pip install --help 2>/dev/null | grep -q -- '--break-system-packages'; then
        if [ -z "${VIRTUAL_ENV:-}" ]; then
            pip_args+=(--break-system-packages)
        fi
    fi
    "$PYTHON" -m pip "${pip_args[@]}" "${missing_pip[@]}"
    for spec in "${PIP_PACKAGES[@]}"; do
        import_name="${spec##*:}"
        "$PYTHON" -c "import ${import_name}" || { log "failed to import ${import_name} after install"; exit 1; }
    done
fi

# --- KafkaJS (tests/js, run by tests/python/test_kafkajs.py) ----------------
JS_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/js"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing node and npm"
    apt_install nodejs npm
fi
if [ ! -f "$JS_DIR/node_modules/kafkajs/package.json" ]; then
    log "installing kafkajs into $JS_DIR/node_modules"
    (cd "$JS_DIR" && npm install --no-audit --no-fund --silent)
fi

# --- helm (chart tests) ------------------------------------------------------
"$(dirname "$0")/install-helm.sh"
