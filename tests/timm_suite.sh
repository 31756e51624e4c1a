#!/usr/bin/env bash
# Runs timm's own model test suite (tests/test_models.py from the timm sdist, unmodified) on every
# timm-mrla model. Needs the project installed; fetches the sdist of the installed timm release.
# The pretrained tests load every pretrained tag through the Hub code path, offline, from a Hugging Face cache
# holding the zoo's weights (`timm-mrla zoo cache` lays out what this checkout holds) and, for the warm-start
# tags, STAND-INS of timm's own timm/<base>.<tag> repositories (random weights in timm's layout, made by
# tests/timm_standins.py): the Hub is not needed, nor reached.
#   bash tests/timm_suite.sh [extra pytest args]   (a -k of your own replaces '-k mrla': keep it, as in -k 'mrla and fx')
set -euo pipefail
python=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
version=$("$python" -c 'import timm; print(timm.__version__)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "timm==$version" -d "$work"
tar -xzf "$work/timm-$version.tar.gz" -C "$work"
# run the copied tests against the installed timm, not the sdist's sources
mkdir "$work/suite" && cp -r "$work/timm-$version/tests" "$work/suite/"
"$python" -m timm_mrla.cli zoo cache "$work/hub-cache"
"$python" "$here/timm_standins.py" --out "$work/hub-cache"
cd "$work/suite"
status=0
HF_HUB_OFFLINE=1 HF_HUB_CACHE="$work/hub-cache" TORCH_BACKEND=timm_mrla "$python" -m pytest tests/test_models.py -k mrla -p no:cacheprovider -q "$@" || status=$?
# exit 5 means nothing was collected: no mrla model reached timm's registry, which is a failure here
[ "$status" -eq 5 ] && echo "timm_suite: no timm-mrla model was collected" >&2
exit "$status"
