# wasmail: build, test and demo. `make demo` and `make test` work on a fresh
# machine: both depend on `setup`, which installs what is missing.

CARGO       ?= cargo
PYTHON      ?= python3
WASM_TARGET := wasm32-wasip2
WASM_DIR    := target/$(WASM_TARGET)/release
MAILER      := $(WASM_DIR)/wasmail_mailer.wasm
PLUGINS     := hello report bulk hostile netgrab
PLUGIN_PKGS := $(addprefix -p wasmail-plugin-,$(PLUGINS))
WASMAIL     := target/debug/wasmail
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SETUP_STAMP := target/.setup-done

.PHONY: setup build test demo bench fuzz clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP):
	rustup target add $(WASM_TARGET)
	@if ! command -v smtp-sink >/dev/null && [ ! -x /usr/sbin/smtp-sink ]; then \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postfix; \
	fi
	@$(PYTHON) -c "import aiosmtpd, pytest" 2>/dev/null || $(PYTHON) -m pip install -q aiosmtpd pytest
	@mkdir -p target && touch $@

build: setup
	$(CARGO) build --target $(WASM_TARGET) --release -p wasmail-mailer $(PLUGIN_PKGS)
	$(CARGO) build -p wasmail

test: build
	$(CARGO) test -p wasmail-mailer -p wasmail -p wasmail-plugin-report -p wasmail-plugin-bulk
	WASMAIL_BIN=$(CURDIR)/$(WASMAIL) WASMAIL_PLUGINS=$(CURDIR)/$(WASM_DIR) $(PYTHON) -m pytest -q tests

bench: build
	@command -v msmtp >/dev/null && command -v swaks >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq msmtp swaks
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
FUZZ_TARGETS ?= reply_parser ehlo address mime_builder
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
