"""The ConcurrentDict of "Go concurrency considered harmful", across processes.

Its interface maps onto a shmdict table (Counter values here; a Struct table
serves the same verbs for records):

    SetKey(key, val)                               d.set(key, val)
    CasVal(key, old, new, setOnNotExists) bool     d.cas(key, old, new, set_on_not_exists)
    ReadKey(key) (val, bool)                       d.read(key)
    DeleteKey(key)                                 d.delete(key)

Four processes race to claim a job with CasVal(job, 0, pid, setOnNotExists):
exactly one wins each job.  Then the parent reads, sets and deletes.
"""
import multiprocessing
import os

import shmdict


def claim(jobs, worker, results):
    for job in range(5):
        if jobs.cas(f"job-{job}", 0, worker, set_on_not_exists=True):   # CasVal
            results.add(f"job-{job}")


def main():
    tag = os.getpid()
    jobs = shmdict.open(f"example.jobs.{tag}", shmdict.Counter(), capacity=100)
    results = shmdict.open(f"example.claims.{tag}", shmdict.Counter(), capacity=100)
    procs = [multiprocessing.Process(target=claim, args=(jobs, w, results)) for w in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    for job in range(5):
        print(f"job-{job} claimed {results.read(f'job-{job}')[0]} time(s)")
    jobs.set("job-0", 0)                                      # SetKey
    print("ReadKey job-0:", jobs.read("job-0"))               # ReadKey -> (0, True)
    jobs.delete("job-0")                                      # DeleteKey
    print("ReadKey job-0 after DeleteKey:", jobs.read("job-0"))
    print("CasVal missing key without setOnNotExists:", jobs.cas("job-0", 0, 1))
    jobs.unlink()
    results.unlink()


if __name__ == "__main__":
    main()
