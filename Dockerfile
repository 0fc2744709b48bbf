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
# The `gpu` extra is the CUDA build of TensorFlow, which the base image already holds (the `cpu` extra,
# make's default, would put the CPU build over it).
RUN python -m pip install -c constraints.txt '.[gpu]' \
 && useradd --create-home --uid 10001 worker \
 && mkdir -p /artifacts && chown worker /artifacts \
 && ln -s /models_dir /app/models_dir  # your builders, mounted read-only: models_dir/x.py:build works here too
USER worker
CMD ["python", "-m", "search.worker", "--help"]
