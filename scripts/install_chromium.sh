#!/usr/bin/env bash
# The headless browser tests/test_concept_page.py loads the concept pages in: Debian's chromium,
# installed with apt-get where it is missing (as root, else through sudo); nothing when present.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
echo "+ $sudo apt-get install -y chromium (headless browser for the concept page's tests)" >&2
$sudo apt-get update -q && $sudo apt-get install -y -q chromium
