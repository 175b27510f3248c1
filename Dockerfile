# The customer-store CLI in an image; docker-compose.yml runs its `migrate` against PostgreSQL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the package is built from (no virtualenvs, databases or tests).
COPY pyproject.toml README.md alembic.ini ./
COPY models ./models
COPY repository ./repository
COPY migrations ./migrations
COPY customer_store ./customer_store
RUN pip install . \
    && useradd --create-home --uid 10001 app

# Run from outside the source tree, so the installed copy is what runs.
USER app
WORKDIR /home/app
ENTRYPOINT ["customer-store"]
CMD ["--help"]
