# autofunnel, the production image: the package plus gunicorn.
# Your project folder (funnels/, templates/, autofunnel.toml) is mounted at /project.
#
#   docker build -t autofunnel .
#   docker run --rm -v "$PWD/myproject:/project:ro" autofunnel autofunnel validate
#
# docker-compose.yml shows the whole production setup: PostgreSQL, Redis, migrations,
# web, workers and scheduler from this one image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --user-group autofunnel

# The source is only needed to build and install the package, not at run time.
COPY . /tmp/autofunnel-src
RUN pip install --no-cache-dir /tmp/autofunnel-src \
    && pip install --no-cache-dir "gunicorn>=23" \
    && rm -rf /tmp/autofunnel-src

WORKDIR /project
ENV AUTOFUNNEL_PROJECT_DIR=/project

USER autofunnel
EXPOSE 8000

CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "autofunnel.web:create_app()"]
