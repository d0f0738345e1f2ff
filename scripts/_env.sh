# Shared by demo.sh and test.sh: create the virtual environment and install pinned requirements.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
install_requirements() {
  # $1: requirements file. Re-installs only when the file changed since the last install.
  local req="$1" stamp=".venv/.installed-$(basename "$1")"
  if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install --disable-pip-version-check -q -r "$req"
    # The project itself, editable, so `python -m kiosk` and `kiosk` work from any directory.
    .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
    touch "$stamp"
  fi
}
apt_install() {
  # Debian packages the project needs; installs only what is missing.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}
npm_install() {
  # Browser parts the web app serves itself (model-viewer) and, with "dev", the glTF validator the tests use:
  # from the npm registry into vendor/node_modules, pinned by vendor/package-lock.json. Never a CDN at run time.
  local mode="${1:-runtime}"
  local stamp="vendor/node_modules/.installed-$mode"
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  if [ ! -f "$stamp" ] || [ vendor/package-lock.json -nt "$stamp" ]; then
    if [ "$mode" = dev ]; then
      npm ci --prefix vendor --no-audit --no-fund --loglevel=error
    else
      npm ci --prefix vendor --omit=dev --no-audit --no-fund --loglevel=error
    fi
    touch "$stamp"
  fi
}
