"""Go defaultdict's counter-by-key example, with processes instead of goroutines.

Nine worker processes; worker N adds 1 to "key-N", N times.  Then Range
prints every key, exactly as the Go example does:

    Key key-1 was added 1 times
    ...
    Key key-9 was added 9 times
"""
import multiprocessing
import os

import shmdict


def worker(counts, n):
    for _ in range(n):
        counts.add(f"key-{n}")         # Go: atomic.AddInt64(m.Get(key).(*int64), 1)


def main():
    name = f"example.counter.{os.getpid()}"
    with shmdict.open(name, shmdict.Counter(), capacity=100) as counts:
        procs = [multiprocessing.Process(target=worker, args=(counts, n)) for n in range(1, 10)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        for key, value in sorted(counts.items()):   # Go: m.Range(...)
            print(f"Key {key} was added {value} times")
        counts.unlink()


if __name__ == "__main__":
    main()
