"""FastAPI + slowapi (sync shmdict:// storage) and limits.aio (async+shmdict://),
plus lock routes, for tests/test_asgi.py (run by uvicorn --workers 4)."""
import asyncio
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from limits import parse
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded

import shmdict
import shmdict.limits_storage  # noqa: F401  (registers shmdict:// and async+shmdict://)

NAME = os.environ["APP_TABLE"]


def client(request: Request) -> str:
    return request.headers.get("x-client", "anon")


limiter = Limiter(key_func=client,
                  storage_uri=os.environ.get("APP_SLOW_URI", f"shmdict://{NAME}.slow"))
app = FastAPI()
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
AIO_URI = os.environ.get("APP_AIO_URI", f"async+shmdict://{NAME}.aio")
# limits' async Redis storage defaults to the coredis client; redis-py's own
# asyncio client is what the project installs.
aio_limiter = FixedWindowRateLimiter(storage_from_string(
    AIO_URI, **({"implementation": "redispy"} if AIO_URI.startswith("async+redis") else {})))
AIO_LIMIT = parse(os.environ.get("APP_AIO_LIMIT", "30/hour"))
locks = shmdict.open(f"{NAME}.locks", shmdict.Lock(), capacity=100)
_held = []


@app.get("/slow")
@limiter.limit(os.environ.get("APP_SLOW_LIMIT", "40/hour"))
async def slow(request: Request):
    return {"ok": True}


@app.get("/aio")
async def aio(request: Request):
    if not await aio_limiter.hit(AIO_LIMIT, client(request)):
        return JSONResponse({"error": "rate limited"}, status_code=429)
    return {"ok": True}


@app.get("/ping")
async def ping():
    return {"pid": os.getpid()}


@app.get("/contend")
async def contend():
    """50 coroutines of this worker take one key's lock in turn, 20 ms each."""
    inside = peak = 0

    async def one():
        nonlocal inside, peak
        async with locks["hot"]:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.02)
            inside -= 1
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(50)))
    return {"pid": os.getpid(), "peak": peak, "seconds": time.monotonic() - started}


@app.get("/hold")
async def hold():
    handle = locks["victim"]
    await handle.acquire_async()
    _held.append(handle)                    # never released: this worker dies holding it
    return {"pid": os.getpid()}


@app.get("/take")
async def take():
    handle = locks["victim"]
    got = await handle.acquire_async(timeout=20)
    recovered = handle.recovered
    if got:
        handle.release()
    return {"pid": os.getpid(), "got": got, "recovered": recovered}
