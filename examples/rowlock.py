"""A row lock per key (Go's rowlock): only one worker refreshes a user's token.

Six worker processes all try to refresh the tokens of users 1 to 3.  Each
takes the user's row lock, and refreshes only if nobody did before it; so
every user is refreshed exactly once, whatever the interleaving:

    user-1 token refreshed 1 time(s)
    user-2 token refreshed 1 time(s)
    user-3 token refreshed 1 time(s)
"""
import multiprocessing
import os
import time

import shmdict


def worker(locks, tokens, refreshes):
    for user in (1, 2, 3):
        with locks[f"user-{user}"]:                 # Go: rowlock.Lock(key)
            if tokens.read(f"user-{user}")[1]:      # already fresh
                continue
            time.sleep(0.01)                        # the slow refresh
            tokens.set(f"user-{user}", int(time.time()))
            refreshes.add(f"user-{user}")


def main():
    tag = os.getpid()
    locks = shmdict.open(f"example.rows.{tag}", shmdict.Lock(), capacity=100)
    tokens = shmdict.open(f"example.tokens.{tag}", shmdict.Counter(), capacity=100)
    refreshes = shmdict.open(f"example.refreshes.{tag}", shmdict.Counter(), capacity=100)
    procs = [multiprocessing.Process(target=worker, args=(locks, tokens, refreshes))
             for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    for key, value in sorted(refreshes.items()):
        print(f"{key} token refreshed {value} time(s)")
    for table in (locks, tokens, refreshes):
        table.unlink()


if __name__ == "__main__":
    main()
