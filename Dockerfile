# imgtune serve, CPU image:   docker build -t imgtune . && docker run -p 8000:8000 imgtune
# CUDA image (an NVIDIA host with the container toolkit; torch's CUDA wheels instead of CPU ones):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t imgtune:cuda .
#   docker run --gpus all -p 8000:8000 imgtune:cuda --device cuda
# Options after the image name go to `imgtune serve` (e.g. --token, --warn, --fail).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    IMGTUNE_STUDIES=/home/imgtune/studies

WORKDIR /app
COPY pyproject.toml README.md ./
COPY optimizer ./optimizer
RUN pip install --extra-index-url "$TORCH_INDEX" . \
    && useradd --create-home --uid 10001 imgtune

# Not root: the service writes only its temporary folders and the user's studies folder.
USER imgtune
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["imgtune", "serve", "--host", "0.0.0.0", "--port", "8000"]
