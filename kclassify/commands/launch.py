"""`kclassify launch --workers N RECIPE`: N local worker processes of one multi-worker run.

Each worker is `kclassify fit RECIPE --set runtime.strategy=multi_worker` with the TF_CONFIG a
cluster manager would set (Kubernetes, Slurm, ...), on free localhost ports. Output lines are
prefixed with the worker's index. If one worker fails the others are stopped (a collective op
would wait for it forever); run the same command again to resume from the last checkpoint.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _pump(stream, prefix, echo):
    for line in iter(stream.readline, ""):
        echo(f"{prefix}{line.rstrip()}")


def launch_local(recipe, workers, overrides=(), out=None, fresh=False, command="fit", echo=print, env=None):
    """Start the workers, relay their output, wait; the exit code of the run (first failure wins)."""
    ports = free_ports(workers)
    args = [command, str(recipe), "--set", "runtime.strategy=multi_worker"]
    for item in overrides:
        args += ["--set", item]
    if out:
        args += ["--out", str(out)]
    procs, pumps = [], []
    for i in range(workers):
        worker_env = {**os.environ, **(env or {}), "TF_CONFIG": tf_config(ports, i)}
        # Only the first launch of worker 0 may discard checkpoints: the others must see them.
        cmd = [sys.executable, "-m", "kclassify", *args, *(["--fresh"] if fresh and i == 0 else [])]
        proc = subprocess.Popen(cmd, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        procs.append(proc)
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {i}] ", echo), daemon=True)
        pump.start()
        pumps.append(pump)
    code = _wait(procs, echo)
    for pump in pumps:
        pump.join(timeout=5)
    return code


def _wait(procs, echo):
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, c = failed[0]
            echo(f"worker {i} exited with code {c}: stopping the others; run the same command again to resume")
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
            return c
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)
