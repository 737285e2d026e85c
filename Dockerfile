# IdGlow web app on a CUDA runtime. Models and data are volumes:
#   docker run --gpus all -p 7860:7860 -v $PWD/models:/models:ro -v $PWD/data:/data idglow \
#     --model /models/flux --adapter /models/idglow-adapter --public --safety-model /models/safety
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HF_HUB_OFFLINE=1 \
    IDGLOW_DATA_DIR=/data \
    GRADIO_TEMP_DIR=/data/tmp

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip curl libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 idglow \
    && mkdir -p /app /data /models \
    && chown -R idglow:idglow /app /data /models
WORKDIR /app

COPY --chown=idglow:idglow requirements.txt pyproject.toml README.md ./
COPY --chown=idglow:idglow idglow ./idglow
COPY --chown=idglow:idglow annotation ./annotation
COPY --chown=idglow:idglow db ./db
COPY --chown=idglow:idglow configs ./configs
COPY --chown=idglow:idglow app.py ./
# compose.yaml builds with app,postgres,serve (Ray Serve for the cluster's nodes and the app's ray generator)
ARG IDGLOW_EXTRAS=app,postgres
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade "pip>=24" "setuptools<81" wheel \
    && /opt/venv/bin/pip install -c requirements.txt ".[${IDGLOW_EXTRAS}]"
ENV PATH=/opt/venv/bin:$PATH

USER 1000:1000
VOLUME ["/data", "/models"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:7860/"]
ENTRYPOINT ["python3", "app.py"]
