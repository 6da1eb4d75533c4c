# linterp — make targets. `make demo` and `make test` work from a fresh clone.
#   make demo                      compute + SVD + one site for 4 models on the default image; prints index.html
#   make dist/EDSR4x.zip           a paper bundle (official weights; offline: WEIGHTS=PATH or DEFAULTS=1)
#   make dist/FilterMatrix_SR.mp4  a paper video (its bundles' stores, reused when they exist; DURATION=seconds)
#   variables: IMAGE=photo.png CROP=X,Y,W,H|full WEIGHTS=file.pt DEFAULTS=1 STORE=1 DEVICE=cuda
#              DTYPE=float16|bfloat16 SUPPORT_TOL=1e-6 (compact stores, see docs/compact.md)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LINTERP := $(VENV)/bin/linterp

BUNDLES := Bicubic4x 4L-PixelShuffle EDSR4x CycleGAN-VanGogh CycleGAN-Ukiyoe CycleGAN-Photo2Label
ZIPS    := $(BUNDLES:%=dist/%.zip)
FILMS   := $(patsubst %,dist/%.mp4,FilterMatrix_SR FilterMatrix_I2I)
BENCHES := $(wildcard benchmarks/bench_interpreter.py benchmarks/bench_compute.py benchmarks/bench_svd.py \
                     benchmarks/bench_verify.py)
BUNDLE_ARGS = $(if $(IMAGE),--image '$(IMAGE)') $(if $(CROP),--crop '$(CROP)') \
              $(if $(WEIGHTS),--weights '$(WEIGHTS)') $(if $(DEFAULTS),--defaults) $(if $(STORE),--store) \
              $(if $(DEVICE),--device $(DEVICE)) $(if $(DTYPE),--dtype $(DTYPE)) \
              $(if $(SUPPORT_TOL),--support-tol $(SUPPORT_TOL))
VIDEO_ARGS = $(if $(IMAGE),--image '$(IMAGE)') $(if $(CROP),--crop '$(CROP)') $(if $(DEFAULTS),--defaults) \
             $(if $(DEVICE),--device $(DEVICE)) $(if $(DURATION),--duration $(DURATION))

.PHONY: demo test bench venv system clean dist $(ZIPS) $(FILMS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	@$(LINTERP) bundle demo --out out/demo

# rebuilt on every call: `linterp bundle` reuses the finished stores, SVDs and tiles of the same inputs
$(ZIPS): dist/%.zip: $(STAMP)
	@$(LINTERP) bundle $* $(BUNDLE_ARGS) --out $@

$(FILMS): dist/%.mp4: $(STAMP)
	@$(LINTERP) video --film $* $(VIDEO_ARGS) --out $@

dist: $(ZIPS) $(FILMS)

# Debian packages the tests use: chromium (the viewer in a real browser) and the photographs of the trained
# defaults' training and held-out sets; installed when missing and apt-get is usable, else named
SYSTEM_PACKAGES := chromium lomiri-wallpapers-16.04
system:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing (apt-get)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "could not install $$missing: run apt-get install $$missing as root"; \
	fi

test: $(STAMP) system
	$(PY) -m pytest -q

bench: $(STAMP)
	set -e; for b in $(BENCHES); do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf out dist
