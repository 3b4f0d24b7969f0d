# vfl-sim with Flower 1.41: one image for the SuperLink, every SuperNode and the vfl-sim
# submitter of docker-compose.yml (see docs/docker.md). Flower's processes start one another
# by bare name from PATH, and the SuperLink runs apps in this environment (no `uv sync`), so
# all of them need the project installed: no prebuilt Flower image is used.
#
#   docker build -t vfl-sim .                                                     # torch from PyPI
#   docker build -t vfl-sim --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# Datasets: digits, breast_cancer, wine and synthetic ship with scikit-learn / are generated;
# torchvision sets (MNIST, CIFAR, ...) are read from a folder mounted read-only at /data
# (data.root=/data); the image never downloads them.
FROM python:3.11-slim

# Where torch and torchvision come from: empty = PyPI (CUDA wheels on x86-64), or an index
# such as https://download.pytorch.org/whl/cpu for CPU-only wheels (a much smaller image).
ARG TORCH_INDEX_URL=""
# The non-root user's uid/gid; make them the host user's (VFL_UID/VFL_GID in docker-compose.yml)
# so that the run folders written to the bind-mounted ./runs belong to you.
ARG UID=1000
ARG GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    UV_OFFLINE=1

WORKDIR /app

# Dependencies first, in layers that change only with pyproject.toml: torch and torchvision at
# the versions pinned there (from TORCH_INDEX_URL when given), then the rest of the pins.
COPY pyproject.toml ./
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if re.match(r'[A-Za-z0-9_.-]+', d).group() in ('torch', 'torchvision')))" > /tmp/torch.txt \
 && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(deps))" > /tmp/requirements.txt \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt; \
    else \
        pip install -r /tmp/torch.txt; \
    fi \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/torch.txt /tmp/requirements.txt

# The project itself (its dependencies are already there, so this only adds vfl-sim).
COPY . .
RUN pip install . && rm -rf build *.egg-info

# A non-root user with a home for Flower (FLWR_HOME defaults to ~/.flwr); /runs is where the
# compose services mount ./runs, /data where a dataset folder is mounted read-only.
RUN groupadd --gid "$GID" vfl \
 && useradd --uid "$UID" --gid "$GID" --create-home --shell /usr/sbin/nologin vfl \
 && mkdir -p /runs /data \
 && chown vfl:vfl /runs
USER vfl

CMD ["vfl-sim", "--help"]
