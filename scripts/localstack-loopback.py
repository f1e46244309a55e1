"""Runs LocalStack's runtime with its default gateway, bound to loopback only.

LocalStack's default gateway server (twisted) keeps HTTP connections alive;
the alternative that honours GATEWAY_LISTEN's host (hypercorn) answers every
request with `Connection: close`, and a TCP connect per SQS request cost the
host about 20 µs of CPU per message and halved the queue's throughput here
(BENCHMARKS.md). Twisted, though, listens on every interface whatever
GATEWAY_LISTEN says, so this wrapper pins its listening sockets to
GATEWAY_LISTEN's host before starting LocalStack as `python -m` would.
"""

import functools
import os
import runpy

from twisted.internet import endpoints

host = os.environ.get("GATEWAY_LISTEN", "127.0.0.1:4566").rsplit(":", 1)[0]
endpoints.TCP4ServerEndpoint = functools.partial(endpoints.TCP4ServerEndpoint, interface=host)

runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
