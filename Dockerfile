# embed-cluster, CPU image. `docker compose up` builds it (docker-compose.yml); the GPU variant is the same file
# built with another torch wheel index (docker-compose.gpu.yml, README "Scale out").
FROM python:3.11-slim

# torch first and pinned, as in the README: the CPU wheels unless the build says otherwise
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"

WORKDIR /src
COPY . /src
RUN pip install /src && rm -rf /src

# run as a user; /cache (models) and /keys (CurveZMQ keys) are volumes in docker-compose.yml
RUN useradd --create-home --uid 10001 embed && mkdir -p /cache/huggingface /keys \
    && chown -R embed /cache /keys && chmod 700 /keys
# the worker's ONNX export of the model and its engine measurements (docs/engine.md) are cached in the same
# volume, /cache/embed-cluster: a container's first start measures the engines once for the machine
ENV XDG_CACHE_HOME=/cache
USER embed
WORKDIR /home/embed

# 8421: HTTP; 8424: the broker's CurveZMQ port for workers on other machines (up --lan)
EXPOSE 8421 8424
# a non-loopback front needs EMBED_API_KEY (or --insecure); docker-compose.yml sets the rest
CMD ["embed-cluster", "up", "--host", "0.0.0.0"]
