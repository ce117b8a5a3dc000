# kvr: the two commands that matter on a fresh machine.
#   make demo   build + install kvr into ./_install, build the C++ demo against it, run it
#   make test   every test: Rust (fmt, clippy, cargo test) and the ctest C++ suite
#   make bench-llama   TTFT of the llama.cpp prefix cache (builds llama.cpp once, ~6 min)
PREFIX ?= $(CURDIR)/_install
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test install deps clean bench-llama

demo: install
	cmake -S demo -B demo/build -DCMAKE_PREFIX_PATH="$(PREFIX)" -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build demo/build -j $(JOBS)
	demo/build/kvr_demo

test:
	scripts/run-tests.sh

bench-llama: install
	scripts/llama-bench.sh "$(PREFIX)"

install: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build -j $(JOBS)
	cmake --install build --prefix "$(PREFIX)" >/dev/null
	@echo "kvr installed into $(PREFIX)"

deps:
	scripts/install-deps.sh

clean:
	rm -rf build demo/build _install
	cargo clean
