# The image every k8s manifest runs (k8s/components/image pins it by tag; a digest slot is there).
# Dependencies come from constraints.txt only; the CUDA libraries arrive as the exact versions
# torch==2.13.0's own wheel metadata pins. Runs as the non-root user 10001 (the manifests' runAsUser)
# on a read-only root file system: HOME and every cache point into emptyDir mounts.
#   docker build -t ghcr.io/pscv-dist/pscv-dist:0.1.0 .
# The base image by digest: FROM python:3.11.7-slim-bookworm@sha256:<64 hex>
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --gid 10001 pscv \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin pscv

WORKDIR /opt/pscv-dist
# what `pip install .` needs, then the code (the .dockerignore keeps .git, data, runs and venvs out)
COPY setup.py README.md constraints.txt ./
COPY pscv_dist/ pscv_dist/
COPY launch/ launch/
COPY tune/ tune/
RUN pip install -c constraints.txt -e ".[deepspeed,dali,tune]" \
 && pip check

USER 10001:10001
ENV HOME=/tmp
ENTRYPOINT []
CMD ["pscv", "--help"]
