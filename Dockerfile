# nanonlp on CPU: `nanonlp serve` (and every other command) in a slim Python image.
#   docker build -t nanonlp .
#   docker run --rm -p 8000:8000 -v "$PWD/runs:/runs:ro" -e NANONLP_API_KEY=s3cret nanonlp serve /runs/sst2_ngrams --host 0.0.0.0
# For a GPU, start from a CUDA image and install the matching PyTorch build instead of the CPU one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# PyTorch's CPU build first, so nothing below pulls a CUDA build of several GB.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3"
COPY pyproject.toml README.md ./
COPY nanonlp ./nanonlp
RUN pip install ".[serve]"

# Never root: the server reads the mounted runs and writes nothing.
RUN useradd --create-home --uid 10001 nanonlp
USER nanonlp

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"
ENTRYPOINT ["nanonlp"]
CMD ["--help"]
