# One image for web, worker and beat (docker-compose.yml picks the command): the `prod` target,
# the default. The `dev` target adds the development tools, the upstream emulator among them,
# for the compose `dev` profile.
FROM python:3.11-slim AS app

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements/ requirements/
RUN pip install -r requirements/prod.txt

COPY . .
RUN DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0 \
    && useradd --system --uid 1000 broker && chown -R broker /app/var
USER broker

EXPOSE 8000
ENV GUNICORN_BIND=0.0.0.0:8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "broker.wsgi:application"]

FROM app AS dev
USER root
RUN pip install -r requirements/dev.txt
USER broker
EXPOSE 8765
CMD ["python", "manage.py", "chatkit_emulator", "--host", "0.0.0.0", "--port", "8765"]

# Last, so that a plain `docker build .` gives the production image.
FROM app AS prod
