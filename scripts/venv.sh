# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/autobahn.sh (and .ci/run): makes sure
# the Python venv at ${VENV:-.venv} exists and has scripts/requirements.txt
# installed, then exports VENV (absolute path).
#
# The install is skipped when the venv already holds exactly this
# requirements.txt (a hash of it is kept in $VENV/.requirements.sha256).
# Set PYTHON to choose the interpreter that creates the venv (default python3).

_venv_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-.venv}"
case "$VENV" in
    /*) ;;
    *) VENV="$_venv_root/$VENV" ;;
esac
export VENV

_venv_req="$_venv_root/scripts/requirements.txt"
_venv_stamp="$VENV/.requirements.sha256"

if [ ! -x "$VENV/bin/python" ]; then
    echo "venv: creating $VENV" >&2
    if ! "${PYTHON:-python3}" -m venv "$VENV"; then
        echo "venv: '${PYTHON:-python3} -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        return 1 2>/dev/null || exit 1
    fi
fi

_venv_want="$(sha256sum "$_venv_req" | cut -d' ' -f1)"
if [ "$(cat "$_venv_stamp" 2>/dev/null)" != "$_venv_want" ]; then
    echo "venv: installing $_venv_req" >&2
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$_venv_req"; then
        echo "venv: pip install -r $_venv_req failed" >&2
        return 1 2>/dev/null || exit 1
    fi
    echo "$_venv_want" > "$_venv_stamp"
fi
unset _venv_root _venv_req _venv_stamp _venv_want
