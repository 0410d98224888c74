#!/usr/bin/env bash
# The set-up as on a fresh Debian/Ubuntu machine with the distribution's own
# Python (issue #16). There, PEP 668 makes `python3 -m pip install` fail with
# `externally-managed-environment`, so neither `make demo` nor `make test` may
# rely on pip against the system interpreter.
#
# In a clean copy of this tree (tracked files plus uncommitted changes;
# nothing ignored, so no target/ and no .venv), it runs
# `make setup PYTHON=/usr/bin/python3` and checks that:
#   1. the system interpreter is unchanged: the same distributions and the
#      same entries in each of its site directories (--user ones included)
#      before and after;
#   2. no `pip`/`pip3` command ran (shims first on PATH record any call);
#   3. .venv is a venv of that interpreter, and imports aiosmtpd and pytest
#      from the venv at the versions pinned in tests/requirements.txt;
#   4. from the pristine copy, `make -n demo` runs no Python, pip or venv at
#      all, and `make -n test` runs pip only as .venv/bin/python -m pip and
#      pytest from .venv;
#   5. the venv runs tests/test_fixtures.py (the harness against aiosmtpd,
#      smtp-sink and openssl; it needs no wasmail binary).
# Nothing is built: `make -n` only prints the cargo commands.
#
# Ends with "fresh-setup: PASS" (exit 0) or "fresh-setup: FAIL" and the
# reasons (exit 1). SYSTEM_PYTHON overrides /usr/bin/python3; KEEP=1 keeps
# the copy. `make test-setup` runs it; so does CI (.ci/run).
set -euo pipefail

SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
start=$SECONDS
failures=()
fail() { failures+=("$1"); echo "  FAILED: $1"; }
step() { echo "== fresh-setup: $1 ($((SECONDS - start)) s)"; }
finish() {
    if [ ${#failures[@]} -eq 0 ]; then
        echo "fresh-setup: PASS ($((SECONDS - start)) s; make setup took ${setup_s:-?} s)"
        exit 0
    fi
    echo "fresh-setup: FAIL (${#failures[@]} check(s), $((SECONDS - start)) s)"
    printf '  - %s\n' "${failures[@]}"
    exit 1
}

if [ ! -x "$SYSTEM_PYTHON" ]; then
    fail "no system interpreter at $SYSTEM_PYTHON"
    finish
fi

# A clean room: nothing inherited from an outer make, venv or Python setting,
# and pip's PEP 668 guard left on.
unset MAKEFLAGS MFLAGS MAKELEVEL VIRTUAL_ENV PYTHONPATH PYTHONHOME PYTHONUSERBASE \
      PIP_BREAK_SYSTEM_PACKAGES PIP_USER PIP_TARGET PIP_PREFIX
export PIP_REQUIRE_VIRTUALENV=1

work=$(mktemp -d "${TMPDIR:-/tmp}/wasmail-fresh-setup.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "(kept $work)"; else rm -rf "$work"; fi; }
trap cleanup EXIT
copy=$work/wasmail

# What the system interpreter has installed, and what its site directories
# hold. importlib.metadata works without pip (Debian's python3 may have none).
snapshot() {
    (cd / && "$SYSTEM_PYTHON" -E -c '
import importlib.metadata as md, os, site
for d in sorted({*site.getsitepackages(), site.getusersitepackages()}):
    if os.path.isdir(d):
        print("dir", d, *sorted(e for e in os.listdir(d) if e != "__pycache__"))
    else:
        print("dir", d, "<absent>")
for name in sorted({"%s==%s" % (d.metadata["Name"], d.version) for d in md.distributions()}):
    print("dist", name)
')
}

step "copying $repo (tracked and uncommitted files)"
mkdir -p "$copy"
if ! git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    fail "$repo is not a git work tree"
    finish
fi
(cd "$repo" && git ls-files -z -co --exclude-standard |
    while IFS= read -r -d '' f; do
        if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
    done |
    tar --null -T - -cf -) | tar -C "$copy" -xf -
for p in target .venv node_modules; do
    [ ! -e "$copy/$p" ] || fail "the copy is not clean: it has $p"
done

step "dry runs from the pristine copy"
demo_plan=$(make -s -C "$copy" -n demo PYTHON="$SYSTEM_PYTHON" 2>&1) || fail "make -n demo failed: $demo_plan"
test_plan=$(make -s -C "$copy" -n test PYTHON="$SYSTEM_PYTHON" 2>&1) || fail "make -n test failed: $test_plan"
if hits=$(grep -Ein 'pip|python|venv' <<<"$demo_plan"); then
    fail "make demo would run Python, pip or a venv: $hits"
fi
# pip may appear only as the venv's own (.venv/bin/python -m pip).
if hits=$(sed -e 's#\.venv/bin/python -m pip##g' -e 's/ensurepip//g' \
              -e 's/--disable-pip-version-check//g' <<<"$test_plan" |
          grep -Enw 'pip[0-9.]*'); then
    fail "make test would run pip outside .venv: $hits"
fi
grep -q '\.venv/bin/python -m pip install .*-r tests/requirements.txt' <<<"$test_plan" ||
    fail "make test would not install tests/requirements.txt into .venv"
grep -q '\.venv/bin/python -m pytest' <<<"$test_plan" ||
    fail "make test would not run pytest from .venv"
if hits=$(grep -Fn -- "$SYSTEM_PYTHON -m pip" <<<"$test_plan$demo_plan"); then
    fail "pip against $SYSTEM_PYTHON: $hits"
fi

step "make setup PYTHON=$SYSTEM_PYTHON"
mkdir -p "$work/shims"
pyver=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for name in pip pip3 "pip$pyver"; do
    printf '#!/bin/sh\necho "$0 $*" >> %q/pip-calls\nexit 1\n' "$work" > "$work/shims/$name"
    chmod +x "$work/shims/$name"
done
snapshot > "$work/before"
setup_start=$SECONDS
if ! PATH="$work/shims:$PATH" make -C "$copy" setup PYTHON="$SYSTEM_PYTHON"; then
    fail "make setup PYTHON=$SYSTEM_PYTHON failed"
    finish
fi
setup_s=$((SECONDS - setup_start))
snapshot > "$work/after"

step "checking the system interpreter and the venv"
if ! diff_out=$(diff "$work/before" "$work/after"); then
    fail "$SYSTEM_PYTHON changed during make setup: $diff_out"
fi
if [ -s "$work/pip-calls" ]; then
    fail "pip ran from PATH: $(cat "$work/pip-calls")"
fi
venv_py=$copy/.venv/bin/python
if [ ! -x "$venv_py" ]; then
    fail "make setup made no .venv/bin/python"
    finish
fi
(cd "$copy" && .venv/bin/python -c '
import importlib.metadata as md, os, re, sys
venv = os.path.realpath(".venv")
assert sys.prefix != sys.base_prefix and os.path.realpath(sys.prefix) == venv, \
    f"not the project venv: prefix {sys.prefix}"
import aiosmtpd, pytest
for mod in (aiosmtpd, pytest):
    assert os.path.realpath(mod.__file__).startswith(venv + os.sep), f"{mod.__name__} from {mod.__file__}"
pins = dict(re.findall(r"^(aiosmtpd|pytest)==(\S+)", open("tests/requirements.txt").read(), re.M))
for name, version in pins.items():
    assert md.version(name) == version, f"{name} {md.version(name)}, pinned {version}"
assert len(pins) == 2, pins
print("  .venv: Python %s on %s, aiosmtpd %s, pytest %s"
      % (sys.version.split()[0], sys.base_prefix, md.version("aiosmtpd"), md.version("pytest")))
') || fail ".venv is not the venv make test needs"
(cd "$copy" && .venv/bin/python -m pip check -q --disable-pip-version-check) ||
    fail "pip check in .venv"
venv_home=$(sed -n 's/^home = //p' "$copy/.venv/pyvenv.cfg")
[ "$venv_home" = "$(dirname "$SYSTEM_PYTHON")" ] ||
    fail ".venv was made from $venv_home, not from $(dirname "$SYSTEM_PYTHON")"

# Its output is shown only on failure: CI reads the closing line of the real
# pytest run, and this one must not be mistaken for it.
step "the venv runs tests/test_fixtures.py"
if fixtures_out=$(cd "$copy" && .venv/bin/python -m pytest -q -p no:cacheprovider \
                      tests/test_fixtures.py 2>&1); then
    echo "  tests/test_fixtures.py: green with .venv/bin/python"
else
    echo "$fixtures_out"
    fail "tests/test_fixtures.py with .venv/bin/python"
fi

finish
