# Shared by scripts/serve and scripts/test: make sure .venv exists and holds the project.
# Sourced, not executed. Reinstalls only when pyproject.toml changed since the last install.

VENV="${VENV:-.venv}"

# ensure_venv [extras] — e.g. `ensure_venv test` installs '.[test]'.
ensure_venv() {
    local extras="${1:-}" spec="." stamp hash
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV"
        python3 -m venv "$VENV" || return 1
    fi
    hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    stamp="$VENV/.chatcast-install${extras:+-$extras}"
    # A test install also satisfies a plain one.
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
        return 0
    fi
    if [ -z "$extras" ] && [ -f "$VENV/.chatcast-install-test" ] \
        && [ "$(cat "$VENV/.chatcast-install-test")" = "$hash" ]; then
        return 0
    fi
    echo "installing $spec into $VENV (pyproject.toml changed or first run)"
    "$VENV/bin/python" -m pip install --quiet -e "$spec" || return 1
    echo "$hash" > "$stamp"
}
