"""Go defaultdict's two-layer counter (SharedPoolMapGenerator), with processes.

The second layer is a view, ``counts.sub("key1-N")``: all the inner maps share
the table's one pool of slots.  Worker (N, M) adds N*M times to key2-M inside
key1-N, then the layers are printed:

    key1-1/key2-1 was added 1 times
    ...
    key1-3/key2-3 was added 9 times
"""
import multiprocessing
import os

import shmdict


def worker(counts, n1, n2):
    inner = counts.sub(f"key1-{n1}")            # Go: m.Get(key1).(defaultdict.Map)
    for _ in range(n1 * n2):
        inner.add(f"key2-{n2}")


def main():
    name = f"example.two_layer.{os.getpid()}"
    with shmdict.open(name, shmdict.Counter(), capacity=100) as counts:
        procs = [multiprocessing.Process(target=worker, args=(counts, n1, n2))
                 for n1 in range(1, 4) for n2 in range(1, 4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        for n1 in range(1, 4):
            for key2, value in sorted(counts.sub(f"key1-{n1}").items()):
                print(f"key1-{n1}/{key2} was added {value} times")
        counts.unlink()


if __name__ == "__main__":
    main()
