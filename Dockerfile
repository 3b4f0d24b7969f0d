# vfl-sim with Flower 1.41: one image for the SuperLink, every party's node and the vfl-sim
# submitter of docker-compose.yml (see docs/docker.md). Flower's processes start one another
# by bare name from PATH, and the SuperLink runs apps in this environment (no `uv sync`), so
# all of them need the project installed: no prebuilt Flower image is used.
#
#   docker build -t vfl-sim .                                                     # torch from PyPI
#   docker build -t vfl-sim --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   docker build -t vfl-sim --build-arg PYTHON_IMAGE=local/python:3.11-bookworm .  # no registry:
#       scripts/docker-base-image.sh makes that base image locally
#
# Behind a TLS-intercepting proxy, put its CA bundle in the build context as .docker-ca.pem:
# pip trusts it during the build (a CA bundle is public: the layer that copies it keeps it).
#
# Datasets: digits, breast_cancer, wine and synthetic ship with scikit-learn / are generated;
# torchvision sets (MNIST, CIFAR, ...) are read from a folder mounted read-only at /data
# (data.root=/data); the image never downloads them.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# Where torch and torchvision come from: empty = PyPI (CUDA wheels on x86-64), or an index
# such as https://download.pytorch.org/whl/cpu for CPU-only wheels (a much smaller image).
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    UV_OFFLINE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first, in layers that change only with pyproject.toml: torch and torchvision at
# the versions pinned there (from TORCH_INDEX_URL when given), then the rest of the pins. A
# virtualenv, so that Debian's own python3 (a base made by scripts/docker-base-image.sh) works
# like the python image's.
COPY pyproject.toml .docker-ca.pe[m] /tmp/build/
RUN python3 -m venv /opt/venv \
 && if [ -s /tmp/build/.docker-ca.pem ]; then export PIP_CERT=/tmp/build/.docker-ca.pem; fi \
 && cd /tmp/build \
 && python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if re.match(r'[A-Za-z0-9_.-]+', d).group() in ('torch', 'torchvision')))" > torch.txt \
 && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(deps))" > requirements.txt \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" -r torch.txt; \
    else \
        pip install -r torch.txt; \
    fi \
 && pip install -r requirements.txt \
 && cd / && rm -rf /tmp/build

# The project itself (its dependencies are already there, so this only adds vfl-sim).
COPY . .
# No build isolation: setuptools is in the venv already, and the build reaches no index.
RUN rm -f .docker-ca.pem && pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info

# /runs is where the compose services mount ./runs, /data where a dataset folder is mounted
# read-only. The entrypoint runs each command as the owner of /runs (docker-entrypoint.sh).
RUN mkdir -p /runs /data && install -m 0755 scripts/docker-entrypoint.sh /usr/local/bin/vfl-sim-entrypoint
ENTRYPOINT ["vfl-sim-entrypoint"]
CMD ["vfl-sim", "--help"]
