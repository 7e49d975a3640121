"""gunicorn settings, prometheus_client's multiprocess mode (for comparison).

Run with ``METRICS=prometheus_client gunicorn -c gunicorn.multiproc.conf.py``.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

wsgi_app = "app:application"
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "4"))
max_requests = int(os.environ.get("EXAMPLE_MAX_REQUESTS", "0"))
worker_class = "sync"
timeout = 120
accesslog = None
control_socket_disable = True

# The directory must exist, be empty at start, and be set before the app
# imports prometheus_client (the workers inherit the environment).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="prom-mp-"))
DIRECTORY = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):
    shutil.rmtree(DIRECTORY, ignore_errors=True)
    os.makedirs(DIRECTORY)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
