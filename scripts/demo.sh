#!/usr/bin/env bash
# One command on a fresh machine: install, then run the whole show on the weights-free default.
#   scripts/demo.sh                 full screen
#   scripts/demo.sh --windowed      in a window
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
apt_install fonts-dejavu-core   # the captions' font (the display falls back to pygame's own without it)
install_requirements requirements.txt
npm_install runtime
exec .venv/bin/python -m kiosk demo "$@"
