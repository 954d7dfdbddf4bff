"""The HTTP layer under the app: what arrives on a socket is bounded here before any route sees it.

* :mod:`.protocol`: the HTTP/1.1 connection (uvicorn's httptools protocol, subclassed): connection cap,
  request-head size and field count, head and body read timeouts, closing after an early answer, and the
  drain after SIGTERM.
* :mod:`.server`: the one place that builds uvicorn's configuration from the settings (the CLI and the tests).
* :mod:`.body`: reading a request body with bounds derived from the route's rows and values.
* :mod:`.offload`: parsing large bodies off the event loop.
* :mod:`.direct`: the hot routes served by the protocol itself, without the ASGI stack; :mod:`.call` is such
  a request as its handler sees it.
* :mod:`.lane`: the batch lane, where small encode requests are parsed, run and rendered a batch at a time.
"""
