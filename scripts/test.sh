#!/usr/bin/env bash
# One command on a fresh machine: install what the tests need, then run them all.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
apt_install chromium xvfb xauth fonts-dejavu-core nginx-light poppler-utils
npm_install dev
install_requirements requirements-test.txt
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q -ra --timeout=300 "$@"
