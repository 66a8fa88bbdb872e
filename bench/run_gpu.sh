#!/usr/bin/env bash
# Run bench.gpu where only torch, transformers, pandas, numpy and pyyaml are installed (a
# bare GPU machine): lays the package out in a temporary folder the way pyproject.toml's
# package-dir maps it, without pip. Arguments go to bench.gpu.
#   bash bench/run_gpu.sh --out gpu.json
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pkg=$(mktemp -d)
mkdir -p "$pkg/cleancurate"
cp -r "$root/cleancurate/." "$pkg/cleancurate/"
for d in udfs schemas conf jobs; do cp -r "$root/$d" "$pkg/cleancurate/$d"; done
cp -r "$root/bench" "$pkg/bench"
# run from the copy: python -m puts the working folder first on sys.path
cd "$pkg"
exec "${PYTHON:-python3}" -m bench.gpu "$@"
