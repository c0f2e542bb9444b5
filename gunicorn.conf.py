# gunicorn reads this file from the working directory. Threads suit this service: a request
# spends nearly all its time waiting on the upstream, and the client keeps one pooled HTTP
# session per thread.
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Above the upstream budget (CHATKIT_TOTAL_TIMEOUT, 10 s by default), so the broker answers a
# slow upstream with its own 504 before gunicorn kills the worker.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
accesslog = "-"
max_requests = 5000
max_requests_jitter = 500
