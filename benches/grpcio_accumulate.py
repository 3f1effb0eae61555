"""Accumulate throughput of `abacus serve` in memory vs `--data-dir`, loaded by
a foreign client: Python grpcio's asyncio API, fresh request ID per call.

This is the review's original measurement of durable mode (64 callers, one
asyncio client, both servers on this machine, in the same run), kept so that
its figure can be compared before and after a change. The Rust benchmark
(`cargo bench --bench durable`) loads the servers far harder; this one shows
what a typical foreign client sees. Rounds alternate the servers' order
(ABBA) and the ratio is taken per round, so that drift on a shared machine
falls on both sides.

Usage (after `cargo build --release --bin abacus`; needs tests/interop's
requirements):

    python3 benches/grpcio_accumulate.py [--bin target/release/abacus]
        [--baseline OTHER_BIN] [--rounds 8] [--seconds 3] [--callers 64]
        [--channels 1]

Prints, per round and server: calls/s, the server's and this client's CPU
(cores), then each build's median durable/in-memory ratio with its
interquartile range. With --baseline, another build's pair of servers runs
in the same rounds (e.g. a binary from before a change). Exits 1 if any call
fails: a failed call is not throughput.
"""

import argparse
import asyncio
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "abacus.v1.Calculator"
CALL_TIMEOUT_S = 30  # a hang guard, never reached by a healthy server
START_TIMEOUT_S = 60  # from spawning a server to its listening line
TICKS = os.sysconf("SC_CLK_TCK")


class Server:
    """One `abacus serve` process on a free loopback port."""

    def __init__(self, name, binary, extra):
        self.name = name
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="warn,abacus::cli::serve=info")
        self.proc = subprocess.Popen(
            [binary, "serve", "--addr", "127.0.0.1:0", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # The server's last log lines, for an error message: a long run
        # must not grow this without bound.
        self.log = collections.deque(maxlen=200)
        self.addr = None
        self._listening = threading.Event()
        # Every line is drained by a thread, so that a full pipe never
        # stalls the server; the server logs its bound address right after
        # binding, and one that does not within START_TIMEOUT_S is given up.
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._listening.wait(START_TIMEOUT_S) or self.addr is None:
            try:  # stderr closed: it is exiting, if not gone already
                code = self.proc.wait(timeout=5) if self._listening.is_set() else None
            except subprocess.TimeoutExpired:
                code = None
            why = f"exited ({code})" if code is not None else f"gave none within {START_TIMEOUT_S} s"
            self.stop()
            sys.exit(f"abacus serve {' '.join(extra)}: no listening address, it {why}:\n" + "".join(self.log))

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if self.addr is None:
                found = re.search(r"listening.*addr=([0-9.]+:[0-9]+)", line)
                if found:
                    self.addr = found.group(1)
                    self._listening.set()
        self._listening.set()  # exited: nothing more will come

    def cpu_seconds(self):
        """User + system CPU of the server process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def message_classes(addr):
    """AccumulateRequest and AccumulateResponse, through server reflection."""
    channel = grpc.insecure_channel(addr)
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName(SERVICE).methods_by_name["Accumulate"]
    classes = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
    channel.close()
    return classes


async def round_at(addr, classes, args, label):
    """One timed round: (calls per second, failures, wall seconds)."""
    request_class, response_class = classes
    channels = [grpc.aio.insecure_channel(addr) for _ in range(args.channels)]
    stubs = [
        c.unary_unary(
            f"/{SERVICE}/Accumulate",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        for c in channels
    ]
    for c in channels:
        await c.channel_ready()
    done = [0]
    failed = []
    stop = asyncio.Event()

    async def caller(k):
        stub = stubs[k % len(stubs)]
        register = f"py{k}"
        n = 0
        while not stop.is_set():
            request = request_class(register=register, delta=1.0, request_id=f"{label}-{k}-{n}")
            n += 1
            try:
                await stub(request, timeout=CALL_TIMEOUT_S)
                done[0] += 1
            except grpc.aio.AioRpcError as err:
                failed.append(f"{err.code().name}: {err.details()}")

    started = time.perf_counter()
    tasks = [asyncio.create_task(caller(k)) for k in range(args.callers)]
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    for c in channels:
        await c.close()
    return done[0] / wall, failed, wall


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/abacus", help="the abacus binary")
    parser.add_argument("--baseline", help="another abacus binary, measured in the same rounds")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per server")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument("--channels", type=int, default=1, help="HTTP/2 connections")
    args = parser.parse_args()
    for name in ("rounds", "callers", "channels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be more than 0 and at most 3600")
    builds = {"this build": args.bin}
    if args.baseline:
        builds["baseline"] = args.baseline
    for binary in builds.values():
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary}: not an executable; run `cargo build --release --bin abacus` first")

    data = tempfile.TemporaryDirectory(prefix="abacus-grpcio-bench-")
    servers = []
    try:
        for build, binary in builds.items():
            durable_dir = os.path.join(data.name, build.replace(" ", "-"))
            servers.append(Server((build, "in memory"), binary, []))
            servers.append(Server((build, "durable"), binary, ["--data-dir", durable_dir]))
        classes = message_classes(servers[0].addr)
        print(
            f"grpcio {grpc.__version__} asyncio client, {args.callers} callers over "
            f"{args.channels} connection(s), fresh request ID per call, "
            f"{args.rounds} rounds of {args.seconds:g} s; {os.cpu_count()} CPUs"
        )
        for build, binary in builds.items():
            print(f"  {build}: {binary}")
        warm_up = argparse.Namespace(**{**vars(args), "seconds": 0.5})
        for s in servers:  # not counted
            await round_at(s.addr, classes, warm_up, f"w-{'-'.join(s.name)}")
        rates = {s.name: [] for s in servers}
        ratios = {build: [] for build in builds}
        for r in range(args.rounds):
            order = servers if r % 4 in (0, 3) else servers[::-1]
            this_round = {}
            for s in order:
                server_cpu, client_cpu = s.cpu_seconds(), time.process_time()
                rate, failed, wall = await round_at(s.addr, classes, args, f"r{r}-{'-'.join(s.name)}")
                server_cpu = (s.cpu_seconds() - server_cpu) / wall
                client_cpu = (time.process_time() - client_cpu) / wall
                name = ", ".join(s.name)
                if failed:
                    sys.exit(f"round {r}, {name}: {len(failed)} calls failed, first: {failed[0]}")
                print(
                    f"  round {r} {name:>22}: {rate:8.0f} calls/s  "
                    f"(server {server_cpu:.2f} cores, client {client_cpu:.2f} cores)"
                )
                rates[s.name].append(rate)
                this_round[s.name] = rate
            for build in builds:
                ratios[build].append(this_round[(build, "durable")] / this_round[(build, "in memory")])
        for name, values in rates.items():
            q1, q2, q3 = quartiles(values)
            print(f"{', '.join(name):>22}: median {q2:.0f} calls/s (IQR {q1:.0f}-{q3:.0f})")
        for build, values in ratios.items():
            q1, q2, q3 = quartiles(values)
            print(
                f"{build}: durable / in memory: median {q2:.2f}x "
                f"(IQR {q1:.2f}-{q3:.2f}, {len(values)} rounds)"
            )
    finally:
        for s in servers:
            s.stop()
        data.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
