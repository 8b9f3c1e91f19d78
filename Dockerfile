# Parley: one worker, `parley run`. docs/deployment.md shows it with compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The embedded defaults' files and the embedding model's cache: a volume in compose.yaml.
    PARLEY_HOME=/data \
    # Reachable from the load balancer and the health check, not only from inside.
    PARLEY_HTTP__HOST=0.0.0.0 \
    # Migrations, prompts and the sample knowledge base are found beside the code
    # (bot/storage/migrate.py, bot/skills/prompts.py), not inside site-packages: this
    # directory's copy of the code is the one that runs.
    PYTHONPATH=/app

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY backends backends
COPY adapters adapters
RUN pip install '.[postgres,redis,telegram]'
COPY alembic.ini ./
COPY migrations migrations
COPY config config
COPY docs docs

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent parley \
    && mkdir -p /data && chown parley /data
USER parley:parley
VOLUME ["/data"]
EXPOSE 8080

# /healthz on the HTTP server (it runs when an adapter mounts something, e.g. the Telegram
# webhook), or on the metrics port when one is set (polling deployments), at the host each
# listens on, as the settings (environment or config file) say: `parley health`, run as its
# light module (the standard library alone, a few milliseconds a probe).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "bot.health"]

# SIGTERM: stop taking input, finish the turns in flight within shutdown_grace_s (8 s, below
# Docker's 10 s), exit 0 (docs/cli.md).
STOPSIGNAL SIGTERM
CMD ["parley", "run"]
