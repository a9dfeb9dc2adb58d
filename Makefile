# dragond -- one Makefile for everything (docs/STYLE.md §4.10).
#
#   make deps        install the Debian packages the project needs (root, idempotent)
#   make             build build/dragond, build/dragon and the tests
#   make test        run the CPU test suite (Check + integration), < 10 minutes on 2 cores
#   make test-gpu    run the GPU tests (skip with a message when no GPU is present)
#   make bench       run the CPU benchmarks against the PyTorch peer (make bench-deps first)
#   make run         start the daemon on the defaults (127.0.0.1:8077, ./dragond-data, cpu)
#
# Feature switches: USE_CUDA ?= auto, USE_VULKAN ?= auto, DEBUG ?= 0, SANITIZE ?= (e.g. address).
# DG_USE_* appears only here and in engine/backend_registry.c.

SHELL      := /bin/bash
BUILD      ?= build
CC         ?= cc
DEBUG      ?= 0
SANITIZE   ?=
USE_CUDA   ?= auto
USE_VULKAN ?= auto
WERROR     ?= $(if $(CI),-Werror,)

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
           -Wno-missing-field-initializers -Wno-format-truncation
OPT     := $(if $(filter 1,$(DEBUG)),-O0 -g,-O3 -g -march=x86-64-v3 -mtune=generic)
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(WERROR) -fno-strict-aliasing -pthread \
           -I. -Iengine -Ikernels/common $(shell pkg-config --cflags jansson libuv 2>/dev/null)
LDLIBS  += -lopenblas -lzstd -lm -pthread
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SANITIZE)
endif

SERVER_LIBS := -lmicrohttpd -ljansson -luv -lsqlite3 -lcurl
PROTO_LIBS  := -ljansson -lcurl

# ---- optional features -------------------------------------------------------------------
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
# nvcc may be a wrapper script outside the toolkit (/usr/local/bin/nvcc), so the libraries are
# found on their own: the toolkit beside nvcc, /usr/local/cuda, then the linker cache.
CUDA_ROOTS  := $(patsubst %/bin/nvcc,%,$(NVCC)) \
               $(shell sed -n 's|^exec \(.*\)/bin/nvcc .*|\1|p' $(NVCC) 2>/dev/null) \
               /usr/local/cuda $(wildcard /usr/local/cuda-*)
CUDA_LIBDIR := $(firstword $(foreach r,$(CUDA_ROOTS),$(foreach d,$(r)/lib64 $(r)/lib \
                 $(r)/targets/x86_64-linux/lib,$(if $(wildcard $(d)/libcublas.so),$(d)))) \
                 $(shell /sbin/ldconfig -p 2>/dev/null | sed -n 's|.*=> \(.*\)/libcublas\.so$$|\1|p' | head -1))
ifeq ($(USE_CUDA),auto)
  USE_CUDA := $(if $(and $(NVCC),$(CUDA_LIBDIR)),1,0)
endif
ifeq ($(USE_CUDA),1)
  ifeq ($(NVCC),)
    $(error USE_CUDA=1 but nvcc was not found)
  endif

  CUDA_SRC    := $(wildcard kernels/cuda/*.cu)
  CUDA_OBJ    := $(patsubst %.cu,$(BUILD)/%.o,$(CUDA_SRC))
  NVCCFLAGS   ?= -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo \
                 -Xcompiler -fPIC -I. -Iengine -Ikernels/common --expt-relaxed-constexpr
  CFLAGS      += -DDG_USE_CUDA
  ifeq ($(CUDA_LIBDIR),)
    $(error USE_CUDA=1 but libcublas.so was not found (set CUDA_LIBDIR=/path/to/cuda/lib64))
  endif
  LDLIBS      += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcublasLt -lcublas -lcudart -lstdc++
  FEATURE_CUDA := ✓ CUDA ($(shell $(NVCC) --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), sm_90a)
else
  CUDA_OBJ    :=
  FEATURE_CUDA := ✗ CUDA: nvcc or cuBLAS not found (or USE_CUDA=0)
endif

GLSLC := $(shell command -v glslc 2>/dev/null)
HAVE_VK := $(shell pkg-config --exists vulkan 2>/dev/null && echo 1)
ifeq ($(USE_VULKAN),auto)
  USE_VULKAN := $(if $(and $(GLSLC),$(HAVE_VK),$(wildcard kernels/vulkan/*.c)),1,0)
endif
ifeq ($(USE_VULKAN),1)
  FEATURE_VULKAN := ✓ Vulkan (glslc)
else
  FEATURE_VULKAN := ✗ Vulkan: backend not built (needs glslc + libvulkan-dev + kernels/vulkan)
endif

# ---- sources -----------------------------------------------------------------------------
ENGINE_SRC := $(wildcard engine/*.c) $(wildcard kernels/ref/*.c) $(wildcard kernels/cpu/*.c)
PROTO_SRC  := $(wildcard proto/*.c)
SERVER_SRC := $(wildcard server/*.c)
CLIENT_SRC := $(wildcard clients/*.c)
ENGINE_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(ENGINE_SRC))
PROTO_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(PROTO_SRC))
SERVER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(SERVER_SRC))
CLIENT_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(CLIENT_SRC))
LIBENGINE  := $(BUILD)/libdgengine.a
LIBPROTO   := $(BUILD)/libdgproto.a

# Tests: every tests/<dir>/test_*.c is its own Check program. tests/gpu is run by test-gpu.
TEST_DIRS  := engine kernels proto server integration
TEST_SRC   := $(foreach d,$(TEST_DIRS),$(wildcard tests/$(d)/test_*.c))
TEST_BIN   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
GPU_TEST_SRC := $(wildcard tests/gpu/test_*.c)
GPU_TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(GPU_TEST_SRC))
BENCH_SRC  := $(wildcard bench/*.c)
BENCH_BIN  := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all features deps bench-deps test test-gpu bench run clean print-config
all: features $(BUILD)/dragond $(BUILD)/dragon $(TEST_BIN) $(GPU_TEST_BIN) $(BENCH_BIN)

features:
	@echo "$(FEATURE_CUDA)"
	@echo "$(FEATURE_VULKAN)"

print-config:
	@echo "CC=$(CC) CFLAGS=$(CFLAGS)"; echo "LDLIBS=$(LDLIBS)"; echo "USE_CUDA=$(USE_CUDA) USE_VULKAN=$(USE_VULKAN)"

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(LIBENGINE): $(ENGINE_OBJ) $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@; ar rcs $@ $^

$(LIBPROTO): $(PROTO_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@; ar rcs $@ $^

$(BUILD)/dragond: $(SERVER_OBJ) $(LIBPROTO) $(LIBENGINE)
	$(CC) $(LDFLAGS) -o $@ $(SERVER_OBJ) $(LIBPROTO) $(LIBENGINE) $(SERVER_LIBS) $(LDLIBS)

$(BUILD)/dragon: $(CLIENT_OBJ) $(LIBPROTO) $(LIBENGINE)
	$(CC) $(LDFLAGS) -o $@ $(CLIENT_OBJ) $(LIBPROTO) $(LIBENGINE) $(PROTO_LIBS) $(LDLIBS)

# Server objects other than main.c are linked into server tests too.
SERVER_LIB_OBJ := $(filter-out $(BUILD)/server/main.o,$(SERVER_OBJ))

$(BUILD)/tests/%: tests/%.c $(SERVER_LIB_OBJ) $(LIBPROTO) $(LIBENGINE) tests/check_util.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(SERVER_LIB_OBJ) $(LIBPROTO) $(LIBENGINE) \
	    $(shell pkg-config --libs check) $(SERVER_LIBS) $(LDLIBS) $(LDFLAGS)

$(BUILD)/bench/%: bench/%.c $(LIBPROTO) $(LIBENGINE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LIBPROTO) $(LIBENGINE) $(PROTO_LIBS) $(LDLIBS) $(LDFLAGS)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- set-up --------------------------------------------------------------------------------
DEB_PACKAGES := build-essential pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev \
                libopenblas-dev libsqlite3-dev libzstd-dev check libcurl4-openssl-dev curl \
                sqlite3 libvulkan-dev glslc mesa-vulkan-drivers python3
# Node.js + npm (the OpenAI client test) and Chromium (the runs-page test) are installed only when
# their commands are missing: a machine may already have Node.js from another source, whose npm
# conflicts with Debian's npm package.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$(echo $$missing)" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all Debian packages present"; fi

bench-deps:
	@dpkg -s python3-torch >/dev/null 2>&1 || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch python3-numpy)

# ---- running -------------------------------------------------------------------------------
test: all
	@bash tests/run_tests.sh $(BUILD) $(TEST_BIN)

test-gpu: all
	@bash tests/gpu/run_gpu_tests.sh $(BUILD) $(GPU_TEST_BIN)

bench: all
	@bash bench/run_bench.sh $(BUILD)

run: $(BUILD)/dragond
	$(BUILD)/dragond serve

clean:
	rm -rf $(BUILD)
