#!/usr/bin/env bash
# The Python package's CI: from a machine with only Rust and python3, a virtual environment
# (target/py-venv, under $CARGO_TARGET_DIR if set) with pinned maturin and pytest, the package
# built and installed into it with
# `pip install ./bindings/python`, the `peerlink` command the tests run against, and pytest.
#
# The wheel is built with the dev profile, so it reuses what `cargo test --workspace` built
# (dependencies are optimized in the dev profile too); users get a release build by default.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/py-venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin==1.16.0" "pytest==9.2.0"
export PATH="$venv/bin:$PATH"

echo "== building the peerlink command (the tests' relay and CLI peer)"
(cd "$root" && cargo build --quiet -p peerlink)

echo "== pip install ./bindings/python"
(cd "$root" && MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/python" -m pip install \
    --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps \
    ./bindings/python)

echo "== pytest"
cd "$here"
PEERLINK_BIN="$target/debug/peerlink" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
