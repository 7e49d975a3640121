"""gunicorn settings, shmdict: one shared metrics table, chosen in the master.

Compared with prometheus_client's recipe (``gunicorn.multiproc.conf.py``):
no ``PROMETHEUS_MULTIPROC_DIR`` to create and wipe, no ``child_exit`` hook
(a dead worker's live gauges drop out of the next scrape by themselves), and
the table's size is bounded by the number of series however many workers
come and go.
"""
import os
import sys

import shmdict
import shmdict.prometheus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

wsgi_app = "app:application"
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "4"))
max_requests = int(os.environ.get("EXAMPLE_MAX_REQUESTS", "0"))
worker_class = "sync"
timeout = 120
accesslog = None
control_socket_disable = True
TABLE = os.environ.get("EXAMPLE_METRICS_TABLE", "example.metrics")


def on_starting(server):
    shmdict.unlink(TABLE)                       # start from zero
    shmdict.prometheus.configure(TABLE, capacity=10_000)   # the workers inherit it


def on_exit(server):
    shmdict.unlink(TABLE)
