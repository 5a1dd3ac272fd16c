#!/usr/bin/env bash
# The compendium's two commands (see README.md):
#   ./run.sh repro [dvc repro args...]   set up the environment if needed, then regenerate everything
#                                        (--keep-going: offline, the release stages fail and the rest,
#                                        the synthetic world included, is still built)
#   ./run.sh test  [pytest args...]      set up the environment if needed, then ruff (lint + format check), then
#                                        every test; pytest's exit code 5 (no tests collected) fails the run
#   ./run.sh img2dataset-env             create the separate download environment .venv-img2dataset (img2dataset
#                                        1.47.0 with its own pins, requirements-img2dataset.txt) for Let It Wag!
#                                        candidates from URL lists; FDP_IMG2DATASET_VENV names another folder
# Both create the virtual environment .venv (Python 3.11 + pip; no conda needed) when it is missing and
# install the pinned requirements whenever requirements.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${FDP_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# pyproject.toml requires Python >=3.11,<3.13: say so before a long install fails half-way
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' 2>/dev/null; then
  echo "run.sh: needs Python 3.11 or 3.12 (found: $("$PYTHON" --version 2>&1 || echo none)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating the virtual environment $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "Installing pinned requirements into $VENV (first run: several minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
  # Headless and offline-friendly defaults; a user's own settings win.
  export MPLBACKEND="${MPLBACKEND:-Agg}" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
  export PATH="$PWD/$VENV/bin:$PATH"
}

img2dataset_env() {
  # img2dataset pins pandas<3 and webdataset<0.3 (this project: pandas 3, webdataset 1), so it gets its own
  # environment, used only through a subprocess (helpers/controls/download.py); remade when its pins change.
  local venv="${FDP_IMG2DATASET_VENV:-.venv-img2dataset}"
  local stamp="$venv/.installed-$(sha256sum requirements-img2dataset.txt | cut -c1-16)"
  if [ -f "$stamp" ]; then
    echo "$venv is up to date"
    return
  fi
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  echo "Installing img2dataset into $venv (about 780 MB)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-img2dataset.txt
  NO_ALBUMENTATIONS_UPDATE=1 "$venv/bin/python" -c "import img2dataset"
  rm -f "$venv"/.installed-*
  touch "$stamp"
}

case "${1:-}" in
  repro)
    shift
    setup
    dvc repro --keep-going "$@"
    ;;
  test)
    shift
    setup
    # The house style first (config in pyproject.toml): lint, and formatting checked without rewriting.
    ruff check src tests benchmarks notebooks conftest.py
    ruff format --check src tests benchmarks notebooks conftest.py
    # Unit tests, then every notebook executed on its small default inputs (nbval, outputs not compared),
    # in a scratch work folder so a user's results are never touched. `set -e` stops at any non-zero exit,
    # pytest's 5 (nothing collected, e.g. a mistyped -k) included.
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    pytest "$@"
    FDP_WORKDIR="$scratch" pytest --nbval-lax -p no:cacheprovider notebooks/ "$@"
    ;;
  img2dataset-env)
    img2dataset_env
    ;;
  *)
    echo "usage: $0 {repro|test|img2dataset-env} [args...]" >&2
    exit 2
    ;;
esac
