#!/usr/bin/env python3
"""test/kube/fake_apiserver.py with TCP_NODELAY on its connections. The fake server writes a response
in several send() calls; with Nagle's algorithm the last one waits for the client's delayed ACK
(~40 ms per response on loopback), which would swamp the few milliseconds a kmesh-cni ADD spends.
A real kube-apiserver (Go net/http) sets TCP_NODELAY. Same arguments as fake_apiserver.py."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "kube"))
import fake_apiserver  # noqa: E402

fake_apiserver.Handler.disable_nagle_algorithm = True
fake_apiserver.main()
