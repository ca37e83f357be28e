"""``saltline daemon``: the SDK over JSON-RPC 2.0 for programs that are not Python (stdio, a
UNIX socket, HTTP with server-sent events); docs/daemon.md describes the protocol.

Modules: :mod:`~.rpc` (JSON-RPC without I/O), :mod:`~.params` (parameter checks),
:mod:`~.codec` (events and results as JSON), :mod:`~.hub` (the clients and the bounded
subscriber queues), :mod:`~.methods` (the method table), :mod:`~.stream` (JSON lines over stdio
and the socket), :mod:`~.http` (``POST /rpc``, ``GET /events``), :mod:`~.server` (running it)."""
