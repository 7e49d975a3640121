"""gunicorn settings for the shmdict example: the master creates the tables.

``on_starting`` runs once in the master before any worker is forked, so
every worker attaches to tables that already exist and start from zero;
``on_exit`` removes them when the server stops.  A worker that dies (even by
SIGKILL) loses nothing: the counts live in shared memory, not in the worker.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

wsgi_app = "app:application"
bind = os.environ.get("SHMDICT_EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SHMDICT_EXAMPLE_WORKERS", "4"))
worker_class = "sync"
timeout = 120
accesslog = None
# gunicorn >= 25 opens a control socket at one path per user; several servers
# (tests, benchmarks) would fight over it.  Older versions ignore this name.
control_socket_disable = True


def on_starting(server):
    import app
    app.create_tables()


def post_worker_init(worker):
    import app
    app.init_worker()


def on_exit(server):
    import app
    app.destroy_tables()
