"""Flask-Limiter on shmdict://, for tests/test_asgi.py (run by gunicorn)."""
import os

from flask import Flask, request
from flask_limiter import Limiter

import shmdict.limits_storage  # noqa: F401  (registers shmdict://)

NAME = os.environ["APP_TABLE"]
app = Flask(__name__)
limiter = Limiter(lambda: request.headers.get("X-Client", "anon"), app=app,
                  storage_uri=f"shmdict://{NAME}?capacity=16",
                  strategy=os.environ.get("APP_STRATEGY", "fixed-window"))


@app.route("/big")
@limiter.limit(os.environ.get("APP_BIG", "19000000/day"), cost=int(os.environ.get("APP_COST", "9000000")))
def big():
    return "ok"


@app.route("/small")
@limiter.limit("3/hour")
def small():
    return "ok"
