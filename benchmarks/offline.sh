#!/usr/bin/env bash
# The GPU section on a machine that has CUDA torch, transformers' stack and the usual
# scientific packages but no package index (a lent cloud GPU box, an air-gapped node).
#
#   benchmarks/offline.sh bundle [PYTHON_VERSION] [ARCHIVE]   # here, where pip works
#   benchmarks/offline.sh run ARCHIVE OUTPUT_DIR              # there, from the repo root
#   benchmarks/offline.sh exec_in ARCHIVE COMMAND...          # there: any command, e.g.
#       python3 benchmarks/gpu_baseline.py --profile           # (the plain loops)
#
# `bundle` downloads the wheels of what raft's training path needs beyond such a machine
# (Ray and its dashboard's dependencies, DeepSpeed, pydantic, raft's pinned transformers
# and peft) for that Python version, at the versions this venv pins, unpacks them and
# packs one xz archive (~45 MB: Ray's Java jars, RLlib and the dashboard's source maps are
# left out). `run` unpacks it into /tmp/raft-site, puts it and the repo on PYTHONPATH
# (Ray's workers inherit it), checks the imports and the GPU, then runs
# `python -m benchmarks --gpu`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

PACKAGES=(
    ray deepspeed hjson pydantic pydantic-core annotated-types typing-inspection
    jsonschema jsonschema-specifications referencing rpds-py tensorboardX
    transformers peft protobuf grpcio
    aiohttp-cors colorful smart-open opencensus opencensus-context google-api-core google-auth
    googleapis-common-protos proto-plus cryptography cffi pycparser pyasn1 pyasn1-modules
    opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
    opentelemetry-exporter-prometheus opentelemetry-proto
)

bundle() {
    local py="${1:-3.12}"
    local archive="${2:-$here/.offline/raft-site-py$py.tar.xz}"
    local python="$here/.venv/bin/python" work
    work="$(mktemp -d)"
    local pins=()
    for name in "${PACKAGES[@]}"; do
        pins+=("$name==$("$python" -c "import importlib.metadata as m; print(m.version('$name'))")")
    done
    # DeepSpeed publishes only an sdist: build its (pure-Python) wheel here, ops left to JIT.
    DS_BUILD_OPS=0 "$python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheels" "deepspeed==$("$python" -c \
        "import importlib.metadata as m; print(m.version('deepspeed'))")"
    local rest=()
    for pin in "${pins[@]}"; do [[ $pin == deepspeed==* ]] || rest+=("$pin"); done
    "$python" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
        --python-version "$py" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$work/wheels" "${rest[@]}"
    mkdir -p "$work/site" "$(dirname "$archive")"
    for wheel in "$work"/wheels/*.whl; do "$python" -m zipfile -e "$wheel" "$work/site"; done
    rm -rf "$work/site/ray/jars" "$work/site/ray/rllib"
    find "$work/site/ray/dashboard/client/build" -name '*.map' -delete
    tar -C "$work/site" -cf - . | xz -6 -T0 >"$archive"
    rm -rf "$work"
    echo "wrote $archive ($(du -h "$archive" | cut -f1))"
}

setup() {
    local archive="${1:?archive}" site=/tmp/raft-site
    mkdir -p "$site"
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$archive" "$site"
    chmod +x "$site"/ray/core/src/ray/*/* "$site"/ray/core/libjemalloc.so  # zip kept no modes
    export PYTHONPATH="$site:$here${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    cd "$here"
    python3 - <<'EOF'
import importlib.metadata as m, sys
import torch, ray, deepspeed, transformers, peft, raft.train, raft.worker  # noqa: F401
assert torch.cuda.is_available(), "no CUDA device visible"
print(sys.version.split()[0], torch.cuda.get_device_name(0),
      {n: m.version(n) for n in ("torch", "ray", "deepspeed", "transformers", "peft", "pyarrow", "numpy")}, flush=True)
EOF
}

run() {  # the GPU section
    local archive="${1:?archive}" out="${2:?output dir}"
    setup "$archive"
    mkdir -p "$out"
    python3 -m benchmarks --gpu --output-dir "$out"
}

exec_in() {  # any command in the same environment, e.g. benchmarks/gpu_baseline.py
    local archive="${1:?archive}"
    shift
    setup "$archive"
    "$@"
}

"$@"
