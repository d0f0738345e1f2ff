#!/usr/bin/env bash
# Install the kiosk's systemd units on an exhibit machine.
#
#   sudo systemd/install.sh --prefix /opt/kiosk --user kiosk --data /var/lib/kiosk
#   systemd/install.sh --dry-run ...        print every action and the rendered units, change nothing
#   systemd/install.sh --root /tmp/stage    write into a staging root (offline enable only, no root needed)
#
# Idempotent: units and the display environment are rewritten only when their
# content changes, the data directory is created if missing, and enabling an
# already enabled target is a no-op.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UNITS=(kiosk.target kiosk-display.service kiosk-worker.service kiosk-web.service kiosk-backup.service kiosk-backup.timer)
# kiosk-backup.service has no [Install] section: the timer starts it.
ENABLE_UNITS=(kiosk.target kiosk-display.service kiosk-worker.service kiosk-web.service kiosk-backup.timer)

PREFIX=/opt/kiosk
RUN_USER=kiosk
DATA=/var/lib/kiosk
CONFIG=""
VIDEO=x11
ROOT=""
DRY_RUN=0
ENABLE=1
START=0

usage() {
    cat <<EOF
usage: $(basename "$0") [options]
  --prefix DIR    installed project, with its venv in DIR/.venv   (default $PREFIX)
  --user NAME     account the three services run as               (default $RUN_USER)
  --data DIR      data directory: store, pieces, weights          (default $DATA)
  --config FILE   exhibit configuration passed to --config        (default DATA/kiosk.toml)
  --video MODE    display output: x11, wayland or kms             (default $VIDEO)
  --root DIR      stage everything under DIR instead of /; enables offline (systemctl --root)
  --no-enable     install the units but do not enable kiosk.target
  --start         (re)start kiosk.target after installing
  --dry-run       print what would be done and the rendered units; change nothing
  -h, --help      this help
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
        --user) need_value "$@"; RUN_USER="$2"; shift 2 ;;
        --data) need_value "$@"; DATA="$2"; shift 2 ;;
        --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
        --video) need_value "$@"; VIDEO="$2"; shift 2 ;;
        --root) need_value "$@"; ROOT="$2"; shift 2 ;;
        --no-enable) ENABLE=0; shift ;;
        --start) START=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done
CONFIG="${CONFIG:-$DATA/kiosk.toml}"

# Values go into unit files: only absolute paths of plain characters (systemd
# would need escaping for spaces and %), and a plain account name.
check_path() {
    [[ "$2" =~ ^/[A-Za-z0-9._/+-]*$ ]] || die "$1 must be an absolute path of letters, digits and ._/+- (got '$2')"
}
check_path --prefix "$PREFIX"
check_path --data "$DATA"
check_path --config "$CONFIG"
[[ -z "$ROOT" ]] || check_path --root "$ROOT"
[[ "$RUN_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user must be a plain account name (got '$RUN_USER')"
case "$VIDEO" in x11|wayland|kms) ;; *) die "--video must be x11, wayland or kms (got '$VIDEO')" ;; esac

if [[ $DRY_RUN -eq 0 && -z "$ROOT" && $EUID -ne 0 ]]; then
    die "must run as root: it writes /etc/systemd/system and /etc/kiosk and creates $DATA.
       Run it with sudo, or use --dry-run to see what it would do, or --root DIR to stage the files."
fi

UNIT_DIR="$ROOT/etc/systemd/system"
ENV_DIR="$ROOT/etc/kiosk"
PYTHON="$PREFIX/.venv/bin/python"

run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

render() {
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@USER@|$RUN_USER|g" -e "s|@DATA@|$DATA|g" -e "s|@CONFIG@|$CONFIG|g" "$1"
}

display_env() {
    echo "# Written by systemd/install.sh --video $VIDEO; read by kiosk-display.service."
    case "$VIDEO" in
        x11) printf 'SDL_VIDEODRIVER=x11\nDISPLAY=:0\n' ;;
        wayland) printf 'SDL_VIDEODRIVER=wayland\nWAYLAND_DISPLAY=wayland-0\nXDG_RUNTIME_DIR=/run/user/%s\n' "$RUN_UID" ;;
        kms) printf 'SDL_VIDEODRIVER=kmsdrm\n' ;;
    esac
}

# install_text DEST MODE < content: write only when the content changed.
install_text() {
    local dest="$1" mode="$2" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [[ -f "$dest" ]] && cmp -s "$tmp" "$dest"; then
        say "unchanged $dest"
        rm -f "$tmp"
        return 0
    fi
    CHANGED=1
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "would write: $dest (mode $mode)"
        sed 's/^/    | /' "$tmp"
        rm -f "$tmp"
    else
        install -D -m "$mode" "$tmp" "$dest"
        rm -f "$tmp"
        say "wrote $dest"
    fi
}

if id -u "$RUN_USER" >/dev/null 2>&1; then
    RUN_UID="$(id -u "$RUN_USER")"
elif [[ $DRY_RUN -eq 1 || -n "$ROOT" ]]; then
    say "warning: user '$RUN_USER' does not exist on this machine"
    RUN_UID=1000
else
    die "user '$RUN_USER' does not exist; create it first, e.g. useradd --system --create-home --groups video,render,input $RUN_USER"
fi

if [[ ! -x "$PYTHON" ]]; then
    [[ $DRY_RUN -eq 1 || -n "$ROOT" ]] || die "$PYTHON not found: create the venv first (python3 -m venv $PREFIX/.venv && $PREFIX/.venv/bin/pip install -r $PREFIX/requirements.txt)"
    say "warning: $PYTHON does not exist yet"
fi

CHANGED=0

# Data directory, owned by the service account when installing for real.
if [[ -d "$ROOT$DATA" ]]; then
    say "exists $ROOT$DATA"
elif [[ $EUID -eq 0 && -z "$ROOT" ]]; then
    run install -d -m 0750 -o "$RUN_USER" -g "$(id -gn "$RUN_USER")" "$DATA"
else
    run install -d -m 0750 "$ROOT$DATA"
fi

default_config() {
    cat <<CONF
# Show configuration for this exhibit machine (python -m kiosk --help; README "Using it").
# Written once by systemd/install.sh; edit freely, it is never overwritten.
[show]
data_dir = "$DATA"
exhibits = ["demo"]            # after fetch-models: ["strange-attractions", "doorways"]
# tap_exhibit = "strange-attractions"
# moderate_prompts = true
# staff_password = "change me"
# public_url = "http://192.168.1.20:8080"
CONF
}

# A starting show configuration; an existing one (the artist's) is left as it is.
if [[ -f "$ROOT$CONFIG" ]]; then
    say "exists $ROOT$CONFIG (left as it is)"
else
    install_text "$ROOT$CONFIG" 0644 < <(default_config)
fi

for unit in "${UNITS[@]}"; do
    install_text "$UNIT_DIR/$unit" 0644 < <(render "$HERE/$unit")
done
install_text "$ENV_DIR/display.env" 0644 < <(display_env)

if [[ -n "$ROOT" ]]; then
    # Offline enable: systemctl --root only writes the .wants symlinks under ROOT.
    if [[ $ENABLE -eq 1 ]] && command -v systemctl >/dev/null 2>&1; then
        run systemctl --root="$ROOT" --quiet enable "${ENABLE_UNITS[@]}"
    fi
    say "staged under $ROOT; no running systemd was touched"
    exit 0
fi

if [[ $CHANGED -eq 1 ]]; then
    run systemctl daemon-reload
fi
if [[ $ENABLE -eq 1 ]]; then
    run systemctl enable "${ENABLE_UNITS[@]}"
fi
if [[ $START -eq 1 ]]; then
    run systemctl restart kiosk.target
fi
if [[ $DRY_RUN -eq 1 ]]; then
    say "dry run: nothing was changed"
else
    say "done"
fi
