# wasmail: build, test and demo. `make demo` and `make test` work on a fresh
# Debian/Ubuntu machine with Rust and Python 3, the distribution's own Python
# included: each sets up what it is missing first, and only what it needs.
#
#   setup-build  the wasm32-wasip2 target: all `build` and `demo` need
#   setup-test   smtp-sink (Postfix) and openssl from apt, and ./.venv with
#                the pinned tests/requirements.txt: what `test` adds
#   setup-js     node and npm (Debian's nodejs and npm packages) if missing,
#                and ./node_modules from package-lock.json (componentize-js)
#   setup        all three (tests/fresh-setup.sh checks it on a clean copy)
#
# The Python and JavaScript example plugins (`lang-plugins`) are built by
# `test` and `bench`, not by `build`: `make demo` needs Rust and nothing
# else, while those two already need the venv (componentize-py is pinned in
# tests/requirements.txt) and add node.
#
# Nothing is pip-installed into the system's Python (PEP 668 forbids it on
# Debian 12+ and Ubuntu 23.04+): PYTHON only creates the venv, and every
# Python tool runs from it ($(PY)). npm packages, if any, likewise go into a
# project-local ./node_modules, never global installs.

CARGO       ?= cargo
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
REQUIREMENTS := tests/requirements.txt
WASM_TARGET := wasm32-wasip2
WASM_DIR    := target/$(WASM_TARGET)/release
MAILER      := $(WASM_DIR)/wasmail_mailer.wasm
PLUGINS     := hello report bulk hostile netgrab
PLUGIN_PKGS := $(addprefix -p wasmail-plugin-,$(PLUGINS))
WASMAIL     := target/debug/wasmail
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
BUILD_STAMP := target/.setup-build-done
VENV_STAMP  := $(VENV)/.requirements-installed
NODE_STAMP  := node_modules/.installed
# The plugin WIT package (no wasi:tls): the one folder plugin toolchains read.
PLUGIN_WIT  := wit
WIT_FILES   := $(shell find wit -name '*.wit')
PY_PLUGINS  := python_hello python_netgrab
JS_PLUGINS  := js_hello js_netgrab
LANG_WASM   := $(foreach p,$(PY_PLUGINS) $(JS_PLUGINS),$(WASM_DIR)/wasmail_plugin_$(p).wasm)

.PHONY: setup setup-build setup-test setup-servers setup-js test-setup build lang-plugins test demo bench fuzz clean

setup: setup-build setup-test setup-js

setup-build: $(BUILD_STAMP)

$(BUILD_STAMP):
	rustup target add $(WASM_TARGET)
	@mkdir -p target && touch $@

setup-test: setup-servers $(VENV_STAMP)

# smtp-sink (in Postfix, left unconfigured), the openssl CLI and nats-server
# (JetStream, for `wasmail worker`; Debian's package puts it in /usr/sbin and
# enables a system service we do not use), from apt.
setup-servers:
	@missing=""; \
	command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || missing="postfix"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from apt:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections && \
	  $(SUDO) apt-get update -qq && \
	  $(APT_INSTALL) $$missing; \
	fi

# The venv, rebuilt from scratch whenever tests/requirements.txt changes.
# Debian and Ubuntu leave `venv`'s ensurepip out of python3 (python3-venv).
$(VENV_STAMP): $(REQUIREMENTS)
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { \
	  echo "$(PYTHON) cannot make a venv: installing python3-venv"; \
	  $(SUDO) apt-get update -qq && $(APT_INSTALL) python3-venv; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-virtualenv -r $(REQUIREMENTS)
	@touch $@

# node (Debian's nodejs) and npm only where missing; componentize-js and its
# dependencies at the exact versions of package-lock.json, in ./node_modules.
setup-js: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm from apt"; \
	  $(SUDO) apt-get update -qq && $(APT_INSTALL) nodejs npm; }
	npm ci --no-audit --no-fund
	@touch $@

# The Python and JavaScript plugins, each rebuilt when its source, its SDK
# or the WIT changes. componentize-py takes about 20 s and makes an 18 MB
# component; componentize-js about 20-30 s for 12 MB.
lang-plugins: $(LANG_WASM)

$(WASM_DIR)/wasmail_plugin_python_%.wasm: plugins/python-%/app.py plugins/sdk-python/wasmail_plugin.py $(WIT_FILES) | $(VENV_STAMP)
	@mkdir -p $(WASM_DIR)
	$(VENV)/bin/componentize-py -d $(PLUGIN_WIT) -w wasmail:mail/plugin componentize \
	  -p plugins/python-$* -p plugins/sdk-python app -o $@

$(WASM_DIR)/wasmail_plugin_js_%.wasm: plugins/js-%/app.js plugins/sdk-js/wasmail-plugin.js plugins/build-js.mjs $(WIT_FILES) | $(NODE_STAMP)
	@mkdir -p $(WASM_DIR)
	node plugins/build-js.mjs plugins/js-$*/app.js $(PLUGIN_WIT) $@

# The set-up itself, as on a fresh machine: `make setup` with the system's
# /usr/bin/python3 in a clean copy of this tree (.ci/run runs it).
test-setup:
	bash tests/fresh-setup.sh

# The host is built by the same cargo invocation the tests use, so `make
# demo` and `make test` share every artifact: a plain `cargo build -p
# wasmail` resolves features without the test crates (indexmap, futures,
# regex-syntax, ...) and would compile wasmtime a second time. `--no-run`
# builds target/debug/wasmail along with the test binaries.
TEST_PKGS   := -p wasmail-mailer -p wasmail -p wasmail-plugin-sdk -p wasmail-plugin-report -p wasmail-plugin-bulk -p wasmail-example-embed

build: setup-build
	$(CARGO) build --target $(WASM_TARGET) --release -p wasmail-mailer $(PLUGIN_PKGS)
	$(CARGO) test --no-run $(TEST_PKGS)

test: setup-test build lang-plugins
	$(CARGO) test $(TEST_PKGS)
	@# Compiled once ahead of time (cached in ~/.cache/wasmail), so no test
	@# pays for an 18 MB component's first compile inside its timeout.
	$(WASMAIL) compile $(LANG_WASM)
	WASMAIL_BIN=$(CURDIR)/$(WASMAIL) WASMAIL_PLUGINS=$(CURDIR)/$(WASM_DIR) $(PY) -m pytest -q tests

# bench.py needs only the standard library, so any python3 will do.
bench: setup-servers build lang-plugins
	@command -v msmtp >/dev/null && command -v swaks >/dev/null || \
	  $(APT_INSTALL) msmtp swaks
	$(CARGO) build --release -p wasmail -p wasmail-bench
	$(PYTHON) bench/bench.py

demo: build
	$(WASMAIL) run $(WASM_DIR)/wasmail_plugin_hello.wasm --input-text demo@example.com
	@echo "The message is in ./outbox:" && ls -1t outbox | head -n 1

# Fuzzing (docs/fuzzing.md): nightly + cargo-fuzz, not part of `make test`.
# Each target runs FUZZ_SECONDS from the seeds in fuzz/corpus/<target> (read
# only); what it learns goes to fuzz/target/corpus/<target>, crashes to
# fuzz/artifacts/<target>. Nice'd: the machine is shared.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= reply_parser ehlo address mime_builder policy
FUZZ_NICE    ?= nice -n 10

fuzz:
	@command -v cargo-fuzz >/dev/null || $(FUZZ_NICE) $(CARGO) install --locked cargo-fuzz
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	cd fuzz && $(FUZZ_NICE) $(CARGO) +nightly fuzz build
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  if (cd fuzz && $(FUZZ_NICE) $(CARGO) +nightly fuzz run $$t target/corpus/$$t corpus/$$t -- \
	        -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) > fuzz/target/$$t.log 2>&1; \
	  then result=clean; else result="FAILED (see fuzz/target/$$t.log, fuzz/artifacts/$$t)"; failed="$$failed $$t"; fi; \
	  execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' fuzz/target/$$t.log | tail -n 1); \
	  echo "   $$t: $${execs:-?} executions, $$result"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz failures:$$failed"; exit 1; fi

clean:
	$(CARGO) clean
