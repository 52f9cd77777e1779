"""A real CPU workload for the bisect and nightly tests: `bench.py` times `work.run()`, whose cost is N."""

BENCH = '''import time
import work
t0 = time.process_time()
for _ in range(3):
    work.run()
print((time.process_time() - t0) * 1000)
'''
WORK = '''N = {n}
def run():
    s = 0
    for i in range(N):
        s += i * i % 7
    return s
'''
N0 = 400_000
