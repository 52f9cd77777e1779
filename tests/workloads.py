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


def workload_project(path, files: dict[str, str], tag: str = "v1.0.0"):
    """A small upstream project carrying the workload (bench.py, work.py at N0) and ``files``, committed and
    tagged ``tag``: the base that the bisect and nightly tests plant their entries on."""
    from conftest import Upstream

    up = Upstream(path)
    up.write("bench.py", BENCH)
    up.write("work.py", WORK.format(n=N0))
    for rel, text in files.items():
        up.write(rel, text)
    up.commit("project 1.0", tag=tag)
    return up
