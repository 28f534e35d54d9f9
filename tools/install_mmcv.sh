#!/usr/bin/env bash
# Installs mmcv 2.1.0 with its compiled ops into the given interpreter's environment.
#   usage: tools/install_mmcv.sh PYTHON [WHEEL_DIR]
# mmsegmentation 1.2.2 imports mmcv's compiled ops, so mmcv-lite does not do. PyPI has only the
# source of mmcv 2.1.0 and its build pins -std=c++17 while torch 2.14's headers need C++20, so:
#   1. use a prebuilt wheel from WHEEL_DIR when one matches (../shared/wheels on these machines);
#   2. otherwise build from source with a compiler shim that rewrites -std=c++17 to -std=c++20 and drops
#      Python's -g (debug info for torch's heavy templates doubles each file's compile time: nms.cpp 15.3 s
#      with it, 7.4 s without; the ops run the same, only gdb sees less)
#      (77 C++ files for the CPU ops; measured: a whole `make install` in a fresh clone without the
#      wheel, pip's wheel cache emptied, took 7 min 34 s on 2 cores with this shim, 12 min 46 s before it
#      dropped -g; the build itself about 6 minutes).
set -euo pipefail
PY=${1:?usage: install_mmcv.sh PYTHON [WHEEL_DIR]}
WHEELS=${2:-}
if "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '2.1.0')" 2>/dev/null; then
  echo "mmcv 2.1.0 with ops already installed"; exit 0
fi
if [ -n "$WHEELS" ] && ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --find-links "$WHEELS" --no-index --no-deps mmcv==2.1.0; then
    "$PY" -m pip install -q mmcv==2.1.0 --find-links "$WHEELS"   # its pure-Python dependencies
    "$PY" -c "import mmcv.ops" && { echo "mmcv 2.1.0 installed from $WHEELS"; exit 0; }
  fi
  echo "the wheel in $WHEELS does not fit this Python/torch; building from source" >&2
fi
echo "building mmcv 2.1.0 from source with C++20 (about 6 minutes on 2 cores; a prebuilt wheel skips it)" >&2
SHIM=$(mktemp -d)
for cc in gcc g++ c++; do
  real=$(command -v $cc)
  cat > "$SHIM/$cc" <<SH
#!/usr/bin/env bash
args=(); for a in "\$@"; do
  [ "\$a" = "-std=c++17" ] && a="-std=c++20"
  [ "\$a" = "-g" ] && continue
  args+=("\$a")
done
exec $real "\${args[@]}" -g0
SH
  chmod +x "$SHIM/$cc"
done
"$PY" -m pip install -q 'setuptools<70' wheel ninja
PATH="$SHIM:$PATH" CC="$SHIM/gcc" CXX="$SHIM/g++" MMCV_WITH_OPS=1 MAX_JOBS=2 \
  "$PY" -m pip install --no-build-isolation --no-binary mmcv mmcv==2.1.0
"$PY" -c "import mmcv.ops"
