# Worker, study-creation and dashboard image for one GPU box. No secrets are baked in: the
# database password arrives as a compose secret file at run time (STORAGE_PASSWORD_FILE).
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2 \
    ARTIFACTS_DIR=/artifacts DATA_CACHE=/artifacts/data-cache

WORKDIR /app
COPY pyproject.toml constraints.txt ./
COPY models ./models
COPY search ./search
COPY storage ./storage
COPY dashboards ./dashboards
COPY data ./data
RUN python -m pip install -c constraints.txt . \
 && useradd --create-home --uid 10001 worker \
 && mkdir -p /artifacts && chown worker /artifacts
USER worker
CMD ["python", "-m", "search.worker", "--help"]
