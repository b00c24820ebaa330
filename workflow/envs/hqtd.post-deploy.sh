#!/usr/bin/env bash
# Snakemake runs this inside the new environment from the working directory (the checkout's
# root): install hqtd itself, its pinned dependencies being already in place (hqtd.yaml).
set -euo pipefail
python -m pip install --no-deps --editable .
