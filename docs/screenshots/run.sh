#!/usr/bin/env bash
# Napari screenshots of a store under a virtual X server (Xvfb). Installs nothing: see README.md here.
#   docs/screenshots/run.sh STORE [OUTDIR] [make_screenshots.py options...]
# OUTDIR defaults to docs/screenshots. PYTHON picks the interpreter (default: python on PATH, e.g. an
# activated venv with rxrx2-zarr, napari[pyqt5] and napari-ome-zarr).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ]; then
    echo "usage: $0 STORE [OUTDIR] [make_screenshots.py options...]" >&2
    exit 2
fi
store="$1"; shift
outdir="${1:-$here}"; [ $# -gt 0 ] && shift
command -v xvfb-run >/dev/null || { echo "xvfb-run not found: apt-get install -y xvfb xauth (README.md)" >&2; exit 1; }
export QT_QPA_PLATFORM=xcb
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
exec xvfb-run -a -s "-screen 0 1920x1200x24" "${PYTHON:-python}" "$here/make_screenshots.py" "$store" "$outdir" "$@"
