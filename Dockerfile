# One image for AdSync's three processes: docker-compose.yml runs it as `backend` (gunicorn, the
# default command below), `worker` (celery worker) and `scheduler` (celery beat).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STATIC_ROOT=/app/staticfiles \
    ADSYNC_DATA_DIR=/app/.data

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# collectstatic imports the settings. With DATABASE_URL and REDIS_URL set they neither create
# .data/ nor open a connection; SECRET_KEY is then required. These values exist for this one
# step only and are not kept in the image.
RUN DATABASE_URL=postgres://build@localhost/build \
    REDIS_URL=redis://localhost:6379/0 \
    SECRET_KEY=collectstatic-only \
    DEBUG=0 \
    python manage.py collectstatic --noinput

# The code stays owned by root and read-only to the app. The user has a writable home because
# gunicorn puts its control socket under $HOME; .data/ is only used without DATABASE_URL.
RUN groupadd --system --gid 10001 adsync \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/adsync \
       --shell /usr/sbin/nologin adsync \
    && mkdir -p /app/.data \
    && chown adsync:adsync /app/.data
# Numeric, so that a runtime that checks for a non-root user can tell without /etc/passwd.
USER 10001:10001

EXPOSE 8000
# The access log leaves out query strings: the OAuth callbacks carry a code and a state there.
# The timeout covers the slowest request, a Google connect listing its customers.
CMD ["gunicorn", "adsync.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--timeout", "120", \
     "--access-logfile", "-", "--access-logformat", "%(h)s \"%(m)s %(U)s\" %(s)s %(b)s %(M)sms"]
