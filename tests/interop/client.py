"""Interop check: a Python grpcio client that knows nothing of abacus.

It discovers `abacus.v1.Calculator` through server reflection (v1alpha, the
protocol grpcio-reflection speaks), builds the message classes from the
served descriptors, calls every RPC by its proto name, and checks results,
status codes, the `abacus-not-applied` trailer and the health service.

Usage: python3 client.py HOST:PORT [--tls-ca CA [--tls-cert CERT --tls-key KEY]]
                                    [--token-file FILE]
(against a fresh server). With --tls-ca it connects over TLS (mutual TLS
with --tls-cert/--tls-key); with --token-file it sends the token as gRPC
access-token call credentials (`authorization: Bearer ...`), which grpcio
only allows over TLS.
Exits 1 on any mismatch, listing every one; 2 when the first call (a health
check) fails, saying why (a refused handshake answers UNAVAILABLE at once).
"""

import argparse
import sys

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "abacus.v1.Calculator"
TIMEOUT_S = 30  # a hang guard, never reached by a healthy server

failures = []
passed = 0


def check(what, got, want):
    global passed
    if isinstance(got, grpc.RpcError):
        got = f"{got.code().name}: {got.details()}"
    if got == want:
        passed += 1
        print(f"ok    {what}: {got!r}")
    else:
        failures.append(what)
        print(f"FAIL  {what}: got {got!r}, want {want!r}")


class Calculator:
    """Calls methods of a reflected service by name."""

    def __init__(self, channel, pool):
        self.channel = channel
        self.service = pool.FindServiceByName(SERVICE)
        self.called = set()

    def method(self, name):
        return self.service.methods_by_name[name]

    def call(self, name, **fields):
        """Returns (response, None) or (None, grpc.RpcError)."""
        m = self.method(name)
        request_class = GetMessageClass(m.input_type)
        response_class = GetMessageClass(m.output_type)
        stub = self.channel.unary_unary(
            f"/{self.service.full_name}/{m.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        self.called.add(name)
        try:
            return stub(request_class(**fields), timeout=TIMEOUT_S), None
        except grpc.RpcError as err:
            return None, err


def not_applied(err):
    return ("abacus-not-applied", "true") in tuple(err.trailing_metadata() or ())


def read(path):
    with open(path, "rb") as f:
        return f.read()


def open_channel(args):
    if args.tls_ca is None:
        return grpc.insecure_channel(args.addr)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca),
        private_key=read(args.tls_key) if args.tls_key else None,
        certificate_chain=read(args.tls_cert) if args.tls_cert else None,
    )
    if args.token_file:
        token = read(args.token_file).decode().strip()
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(args.addr, creds)


def main(args):
    channel = open_channel(args)
    # The server logged its address after binding: the first call connects.
    # Its failure is reported as such, not as a timeout waiting for a
    # channel that can never be ready.
    try:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        print(f"cannot reach the server: {err.code().name}: {err.details()}")
        return 2

    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    for name in (SERVICE, "grpc.health.v1.Health"):
        check(f"reflection lists {name}", name in services, True)
    pool = DescriptorPool(db)
    calc = Calculator(channel, pool)

    # The served descriptors keep the proto's options.
    no_side_effects = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    unknown = descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN
    idempotent = descriptor_pb2.MethodOptions.IDEMPOTENT
    for name, want in [("Add", no_side_effects), ("GetRegister", no_side_effects),
                       ("DeleteRegister", idempotent), ("Accumulate", unknown)]:
        level = calc.method(name).GetOptions().idempotency_level
        check(f"{name} idempotency_level", level, want)

    for name, a, b, want in [("Add", 2, 3, 5), ("Subtract", 10, 4.5, 5.5),
                             ("Multiply", -3, 7, -21), ("Divide", 1, 8, 0.125)]:
        resp, err = calc.call(name, a=a, b=b)
        check(f"{name}({a}, {b})", resp.result if resp else err, want)

    for name, fields, code, fragment in [
        ("Divide", {"a": 1, "b": 0}, grpc.StatusCode.INVALID_ARGUMENT, "division by zero"),
        ("Add", {"a": float("nan"), "b": 1}, grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        ("GetRegister", {"register": "py-never"}, grpc.StatusCode.NOT_FOUND, "does not exist"),
        ("Accumulate", {"register": "", "delta": 1}, grpc.StatusCode.INVALID_ARGUMENT,
         "must not be empty"),
    ]:
        _, err = calc.call(name, **fields)
        what = f"{name}({fields})"
        if err is None:
            check(f"{what} fails", False, True)
            continue
        check(f"{what} code", err.code(), code)
        check(f"{what} message mentions {fragment!r}", fragment in (err.details() or ""), True)
        check(f"{what} has the not-applied trailer", not_applied(err), True)

    for delta, want in [(5, 5), (-2, 3)]:
        resp, err = calc.call("Accumulate", register="py", delta=delta, request_id="")
        check(f"Accumulate(py, {delta})",
              (resp.value, resp.replayed) if resp else err, (want, False))
    resp, err = calc.call("GetRegister", register="py")
    check("GetRegister(py)", resp.value if resp else err, 3)
    resp, err = calc.call("GetStats")
    check("GetStats applied, registers",
          (resp.applied, resp.registers) if resp else err, (2, 1))
    resp, err = calc.call("DeleteRegister", register="py")
    check("DeleteRegister(py)", (resp.deleted, resp.value) if resp else err, (True, 3))
    resp, err = calc.call("DeleteRegister", register="py")
    check("DeleteRegister(py) again", resp.deleted if resp else err, False)
    _, err = calc.call("GetRegister", register="py")
    check("GetRegister(py) after delete", err.code() if err else "answered",
          grpc.StatusCode.NOT_FOUND)

    check("every RPC was called", calc.called, set(calc.service.methods_by_name))

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        check(f"health {service!r}", resp.status, health_pb2.HealthCheckResponse.SERVING)

    channel.close()
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="abacus interop client")
    parser.add_argument("addr", help="HOST:PORT")
    parser.add_argument("--tls-ca", help="trust server certificates signed by this CA (PEM)")
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS (PEM)")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    parser.add_argument("--token-file", help="send this file's token (needs --tls-ca)")
    sys.exit(main(parser.parse_args()))
